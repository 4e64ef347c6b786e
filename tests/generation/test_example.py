"""``examples/test_generation.py`` runs without MODEL_PATH (a tiny random model, no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "examples" / "test_generation.py"


def test_generation_example_runs(tmp_path):
    env = {**os.environ, "MAX_NEW_TOKENS": "3", "NUM_SAMPLES": "1", "THREADS": "1", "TOP_P": "1.0"}
    env.pop("MODEL_PATH", None)
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MODEL_PATH is not set" in result.stdout and "tokens/s" in result.stdout
    assert result.stdout.count("[prompt ") == 3
