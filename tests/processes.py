"""Run a training script on one process and on two (CPU DDP, gloo), to compare the results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TRAINING_TESTS = Path(__file__).parent / "training"


def run_on_one_and_two_processes(tmp_path: Path, script_text: str, *args: str) -> None:
    """Run ``script_text`` as ``script <tmp_path>/d<N> <N> <tests/training> *args`` for N = 1 and 2."""
    script = tmp_path / "ddp_run.py"
    script.write_text(script_text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRAINING_TESTS.parent), str(TRAINING_TESTS)])}
    for devices in (1, 2):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / f"d{devices}"), str(devices),
                               str(TRAINING_TESTS), *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
