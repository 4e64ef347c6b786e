"""Metric sinks: metrics.jsonl always; W&B / SwanLab through their init/log/finish calls."""

import json
import sys
import types

import pytest

from rwkvtune.engine.metrics import MetricsWriter


def fake_run_module(name: str, calls: list) -> types.ModuleType:
    module = types.ModuleType(name)
    module.init = lambda **kwargs: calls.append(("init", kwargs["project"], kwargs["config"]))
    module.log = lambda metrics, step: calls.append(("log", step, metrics))
    module.finish = lambda: calls.append(("finish",))
    return module


@pytest.mark.parametrize("backend", ["wandb", "swanlab"])
def test_jsonl_and_a_run_backend(tmp_path, monkeypatch, backend):
    calls = []
    monkeypatch.setitem(sys.modules, backend, fake_run_module(backend, calls))
    writer = MetricsWriter(tmp_path, [backend], {"lr_init": 1e-3})
    writer.log(1, {"loss": 2.5})
    writer.log(2, {"loss": 2.0, "lr": 1e-3})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "lr": 1e-3}]
    assert calls == [("init", "rwkvtune", {"lr_init": 1e-3}), ("log", 1, {"loss": 2.5}),
                     ("log", 2, {"loss": 2.0, "lr": 1e-3}), ("finish",)]


def test_missing_backend_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ImportError, match=r"pip install 'rwkvtune\[wandb\]'"):
        MetricsWriter(tmp_path, ["wandb"], {})
