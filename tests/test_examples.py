"""The example scripts run as documented (tiny settings through their environment variables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("script", ["train_sft_single_gpu.py", "train_pretrain.py"])
def test_training_example_runs_and_saves_a_final_model(tmp_path, script):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "out"), "EPOCH_STEPS": "2", "MICRO_BSZ": "2",
           "CTX_LEN": "64", "GRAD_CP": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], env=env, capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'step': 2" in result.stdout
    assert (tmp_path / "out" / "final" / "model.pth").is_file()
    assert (tmp_path / "tiny-rwkv7-base" / "config.json").is_file()  # MODEL_PATH unset: a tiny model was made


def test_sft_example_with_lora_then_merge(tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "out"), "EPOCH_STEPS": "2", "MICRO_BSZ": "2", "CTX_LEN": "64",
           "GRAD_CP": "0", "OMP_NUM_THREADS": "1", "LORA_R": "8", "TRAIN_PARTS": "ln"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "train_sft_single_gpu.py")], env=env, capture_output=True,
                            text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable params" in result.stdout and (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file()
    merge = subprocess.run([sys.executable, "-m", "rwkvtune.cli.merge_lora", "-b", str(tmp_path / "tiny-rwkv7-base"),
                            "-l", str(tmp_path / "out" / "final"), "-o", str(tmp_path / "merged")],
                           capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert (tmp_path / "merged" / "model.pth").is_file() and (tmp_path / "merged" / "merge_info.json").is_file()


def test_grpo_example_runs_and_the_workflow_script_parses(tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "out"), "NUM_PROMPTS": "4", "NUM_GENERATIONS": "2",
           "MICRO_BSZ": "2", "MAX_COMPLETION_LENGTH": "3", "EPOCH_STEPS": "1", "OMP_NUM_THREADS": "1",
           "SAVE_ROLLOUT_STEPS": "1"}
    env.pop("MODEL_PATH", None)
    result = subprocess.run([sys.executable, str(EXAMPLES / "train_grpo_single_gpu.py")], env=env,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'step': 1" in result.stdout and (tmp_path / "out" / "final" / "model.pth").is_file()
    rows = (tmp_path / "out" / "rollouts" / "rollouts_step000001.jsonl").read_text().splitlines()
    assert len(rows) == 4  # 2 prompts x 2 completions, each with its exact-answer reward
    for script in ("run_grpo_single_gpu.sh", "run_sft_grpo_single_gpu.sh"):
        assert subprocess.run(["bash", "-n", str(EXAMPLES / script)]).returncode == 0
