"""Metric sinks: always ``metrics.jsonl`` in the output directory, plus TensorBoard / W&B / SwanLab on request.

Backends are imported only when asked for; offline modes (``WANDB_MODE=offline``, SwanLab's local mode)
work without network because the backends honour their own settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Append one JSON object per logging step to ``metrics.jsonl`` and forward it to the backends."""

    def __init__(self, output_dir: Path, report_to: list[str], run_config: dict[str, Any]):
        self.path = output_dir / "metrics.jsonl"
        self._sinks = [_open_sink(name, output_dir, run_config) for name in report_to]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **metrics}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self._sinks:
            sink(step, metrics)

    def close(self) -> None:
        for sink in self._sinks:
            getattr(sink, "close", lambda: None)()


class _TensorBoard:
    def __init__(self, output_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Run:
    """W&B and SwanLab share the ``init(project, config)`` / ``log(dict, step)`` / ``finish()`` shape."""

    def __init__(self, module: Any, output_dir: Path, run_config: dict[str, Any]):
        self.module = module
        self.run = module.init(project="rwkvtune", config=run_config, dir=str(output_dir))

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.module.log(metrics, step=step)

    def close(self) -> None:
        self.module.finish()


def _open_sink(name: str, output_dir: Path, run_config: dict[str, Any]):
    try:
        if name == "tensorboard":
            return _TensorBoard(output_dir)
        if name in ("wandb", "swanlab"):
            import importlib

            return _Run(importlib.import_module(name), output_dir, run_config)
    except ImportError as err:
        raise ImportError(f"report_to={name!r} needs its package: pip install 'rwkvtune[{name}]' ({err})") from err
    raise ValueError(f"unknown report_to backend {name!r}")
