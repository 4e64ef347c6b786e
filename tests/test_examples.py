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
