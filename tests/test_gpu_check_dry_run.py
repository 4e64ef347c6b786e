"""``benchmarks/gpu_check.py --dry-run`` runs every section's code on the CPU (tiny shapes, the chunked
backend standing in for fla) and records the CUDA-only ones as skipped, so the GPU check cannot rot
between the rare runs on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CUDA_ONLY = ("cuda_tests", "syncs")


def test_gpu_check_dry_run_records_every_section(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--in-process", "--threads", "1",
               "--out", str(out)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    sections = results["sections"]
    assert results["dry_run"] and "finished" in results
    for name, entry in sections.items():
        if name in CUDA_ONLY:  # a dry run stays on the CPU, with or without a GPU
            assert entry["status"] == "skipped" and "no CUDA" in entry["data"]["skipped"], name
        else:
            assert entry["status"] == "ok", (name, entry["lines"])
    assert set(sections) >= {"env", "numerics", "loss_match", "sft_0.1b", "sft_1.5b", "decode_0.1b", "lora_1.5b",
                             "infctx", *CUDA_ONLY}
    assert sections["env"]["data"]["bf16_matmul_flops"] > 0
    assert sections["sft_0.1b"]["data"]["mfu"] > 0  # the env section's rate reached the later ones
    assert set(sections["decode_0.1b"]["data"]["tokens_per_s"]) == {"1", "4"}
    assert sections["decode_0.1b"]["data"]["single_sequence_vs_runtime"]["cpu fp32"]["runtime"] > 0
    summary = (out / "summary.md").read_text()
    assert "## numerics: ok" in summary and "skipped: no CUDA" in summary


def test_gpu_check_runs_sections_in_child_processes(tmp_path):
    """The GPU run's path: each section in its own process, its status from the exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path / "from_env")}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--threads", "1",
                             "--sections", "env,cuda_tests"], check=False, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sections = json.loads((tmp_path / "from_env" / "results.json").read_text())["sections"]
    assert sections["env"]["status"] == "ok" and sections["env"]["data"]["bf16_matmul_flops"] > 0
    assert sections["cuda_tests"]["status"] == "skipped"
