"""Every field of the training configs is read and does what its help says: one probe per field, each
showing a change of behaviour (or, for a setting this machine cannot exercise, its validation). A new field
without a probe fails ``test_every_field_has_a_probe``."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from probing import probe_registry
from rwkvtune.engine.fabric import make_fabric, make_strategy
from rwkvtune.engine.loop import total_steps
from rwkvtune.engine.optim import build_optimizer
from rwkvtune.model import RWKV7
from rwkvtune.training import PretrainConfig, SFTConfig, SFTTrainer
from rwkvtune.training.trainers import micro_step_for

CONFIG = tiny_config(n_layer=1, n_embd=64, vocab_size=300, dim_ffn=128, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
BASE = dict(ctx_len=32, micro_bsz=2, epoch_count=1, precision="fp32", grad_cp=0, warmup_steps=0, logging_steps=1,
            lr_init=1e-2, lr_final=1e-3, epoch_save=0)
PROBES, probe = probe_registry()


def model() -> RWKV7:
    m = RWKV7(CONFIG)
    m.load_state_dict(random_state_dict(CONFIG, seed=1))
    return m


def rows(n: int = 8, length: int = 24) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(1, 300, (length,), generator=gen).tolist()} for _ in range(n)]


def run(path: Path, **overrides) -> tuple[list[dict], RWKV7]:
    """Train the tiny model on ``rows()`` with BASE + overrides; (metrics records, trained model)."""
    trained = model()
    SFTTrainer(trained, SFTConfig(output_dir=str(path), **{**BASE, **overrides}), train_dataset=rows()).train()
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()], trained


def weights(m: RWKV7) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@probe("ctx_len")
def _ctx_len(tmp: Path) -> None:
    prepared = SFTTrainer(model(), SFTConfig(**{**BASE, "ctx_len": 16}), train_dataset=rows())._rows(rows())
    assert max(len(prepared[i]["input_ids"]) for i in range(len(prepared))) == 16  # 24-token rows truncated


@probe("micro_bsz", "accumulate_grad_batches", "epoch_count", "epoch_steps", "max_steps")
def _length_of_training(tmp: Path) -> None:
    default = total_steps(16, SFTConfig(**BASE), 1)
    assert default == 8
    for change, steps in (({"micro_bsz": 4}, 4), ({"accumulate_grad_batches": 2}, 4), ({"epoch_count": 3}, 24),
                          ({"epoch_count": 3, "epoch_steps": 2}, 6), ({"max_steps": 5}, 5)):
        assert total_steps(16, SFTConfig(**{**BASE, **change}), 1) == steps, change


@probe("lr_init", "lr_final", "warmup_steps", "lr_schedule")
def _schedule(tmp: Path) -> None:
    def lrs(name, **change):
        return [m["lr"] for m in run(tmp / name, **change)[0]]
    base = lrs("base")
    assert base[0] == pytest.approx(1e-2) and base[-1] == pytest.approx(1e-3)
    assert lrs("init", lr_init=5e-3)[0] == pytest.approx(5e-3)
    assert lrs("final", lr_final=5e-3)[-1] == pytest.approx(5e-3)
    assert lrs("warm", warmup_steps=2)[0] < 1e-2
    assert lrs("const", lr_schedule="constant") == pytest.approx([1e-2] * 4)


@probe("weight_decay", "beta1", "beta2", "adam_eps")
def _optimizer(tmp: Path) -> None:
    config = SFTConfig(**{**BASE, "weight_decay": 0.1, "beta1": 0.8, "beta2": 0.95, "adam_eps": 1e-6})
    groups = {g["name"]: g for g in build_optimizer(model(), config).param_groups}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["betas"] == (0.8, 0.95) and groups["decay"]["eps"] == 1e-6


@probe("grad_clip")
def _grad_clip(tmp: Path) -> None:
    assert not torch.equal(weights(run(tmp / "a", grad_clip=0.0)[1]), weights(run(tmp / "b", grad_clip=1e-3)[1]))


@probe("grad_cp")
def _grad_cp(tmp: Path) -> None:
    on = run(tmp / "on", grad_cp=1)
    assert on[1].grad_cp is True and run(tmp / "off", grad_cp=0)[1].grad_cp is False
    assert [m["loss"] for m in on[0]] == pytest.approx([m["loss"] for m in run(tmp / "x")[0]], abs=1e-5)  # same math


@probe("precision")
def _precision(tmp: Path) -> None:
    fp32, bf16 = run(tmp / "fp32")[0][0]["loss"], run(tmp / "bf16", precision="bf16")[0][0]["loss"]
    assert fp32 != bf16 and abs(fp32 - bf16) < 0.1  # bf16 products round differently
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="precision='fp16' needs CUDA"):
            run(tmp / "fp16", precision="fp16")


@probe("train_type", "chunk_ctx", "truncated_bptt")
def _infctx(tmp: Path) -> None:
    assert micro_step_for(SFTConfig(**BASE)).__name__ == "full_sequence_step"
    normal = weights(run(tmp / "n")[1])
    exact = weights(run(tmp / "e", train_type="infctx", chunk_ctx=8, truncated_bptt=False)[1])
    truncated = weights(run(tmp / "t", train_type="infctx", chunk_ctx=8)[1])
    wider = weights(run(tmp / "w", train_type="infctx", chunk_ctx=16)[1])
    assert torch.allclose(exact, normal, atol=1e-5) and not torch.allclose(truncated, normal, atol=1e-4)
    assert not torch.allclose(wider, truncated, atol=1e-4)


@probe("accelerator", "devices", "num_nodes", "strategy", "ddp_timeout")
def _hardware(tmp: Path) -> None:
    from lightning_fabric.strategies import DDPStrategy

    assert make_fabric(SFTConfig(**{**BASE, "accelerator": "cpu"})).device.type == "cpu"
    assert make_strategy(SFTConfig(**BASE)) == "auto"
    for several in ({"devices": 2}, {"num_nodes": 2}, {"strategy": "ddp"}):
        strategy = make_strategy(SFTConfig(**{**BASE, **several, "ddp_timeout": 60}))
        assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=60), several
    # a hung process stopping the others after ddp_timeout: tests/training/test_multi_node.py
    with pytest.raises(ValueError, match="ddp_timeout must be an integer >= 1"):
        SFTConfig(**{**BASE, "ddp_timeout": 0})
    single = make_fabric(SFTConfig(**{**BASE, "strategy": "single_device", "accelerator": "cpu"})).strategy
    assert type(single).__name__ == "SingleDeviceStrategy"
    assert run(tmp / "single", strategy="single_device")[0][-1]["step"] == 4  # every accepted name runs
    with pytest.raises(ValueError, match="strategy='single_device' runs one process, but devices x num_nodes = 2"):
        SFTConfig(**{**BASE, "strategy": "single_device", "devices": 2})
    with pytest.raises(ValueError, match="strategy='ddp_spawn' is not supported: .* use strategy='ddp'"):
        SFTConfig(**{**BASE, "strategy": "ddp_spawn"})
    with pytest.raises(ValueError, match="accelerator must be one of"):
        SFTConfig(**{**BASE, "accelerator": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="(?i)cuda"):
            run(tmp / "cuda", accelerator="cuda")


@probe("output_dir", "epoch_save", "save_every_n_batches", "save_total_limit")
def _outputs(tmp: Path) -> None:
    run(tmp / "out", epoch_count=2, epoch_save=1, save_every_n_batches=3, save_total_limit=3)
    assert sorted(p.name for p in (tmp / "out").iterdir() if p.is_dir()) == ["batch6", "epoch1", "epoch2", "final"]


@probe("resume_from_checkpoint", "overwrite_output_dir")
def _resume_and_overwrite(tmp: Path) -> None:
    run(tmp / "r", save_every_n_batches=2)
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        run(tmp / "r")
    assert [m["step"] for m in run(tmp / "r", overwrite_output_dir=True)[0][-4:]] == [1, 2, 3, 4]
    (tmp / "r" / "metrics.jsonl").write_text("")
    assert [m["step"] for m in run(tmp / "r", resume_from_checkpoint=str(tmp / "r" / "batch2"))[0]] == [3, 4]


@probe("report_to")
def _report_to(tmp: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'mlflow'"):
        SFTConfig(**{**BASE, "report_to": "mlflow"})
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match=r"pip install 'rwkvtune\[tensorboard\]'"):
            SFTConfig(**{**BASE, "report_to": "tensorboard"})
    else:
        run(tmp / "tb", report_to="tensorboard")
        assert list((tmp / "tb").rglob("events.out.tfevents.*"))


@probe("logging_steps")
def _logging_steps(tmp: Path) -> None:
    assert [m["step"] for m in run(tmp / "l", logging_steps=3)[0]] == [3, 4]  # and always the last step


@probe("eval_steps")
def _eval_steps(tmp: Path) -> None:
    def evaluated_at(name: str, **change) -> list[int]:
        config = SFTConfig(output_dir=str(tmp / name), **{**BASE, "eval_steps": 2, "epoch_count": 2, **change})
        SFTTrainer(model(), config, train_dataset=rows(), eval_dataset=rows(2)).train()
        records = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        return [m["step"] for m in records if "eval_loss" in m]
    assert evaluated_at("e") == [2, 4, 6, 8]
    # evaluation does not wait for a logging step (it once fired only when both fell together: 6 here)
    assert evaluated_at("l", eval_steps=3, logging_steps=2) == [3, 6]
    assert evaluated_at("z", eval_steps=0) == [4, 8]  # 0: at each epoch end


@probe("seed")
def _seed(tmp: Path) -> None:
    assert run(tmp / "a")[0][0]["loss"] != run(tmp / "b", seed=7)[0][0]["loss"]  # another data order
    from rwkvtune.peft import LoraConfig

    def adapter_init(seed: int) -> torch.Tensor:
        trainer = SFTTrainer(model(), SFTConfig(**{**BASE, "seed": seed}), train_dataset=rows(),
                             peft_config=LoraConfig(r=2))
        return trainer.model.get_base_model().blocks[0].att.key.lora_A["default"].weight.detach().clone()
    assert torch.equal(adapter_init(1), adapter_init(1)) and not torch.equal(adapter_init(1), adapter_init(2))


def test_every_field_has_a_probe():
    for config_class in (SFTConfig, PretrainConfig):
        assert {f.name for f in dataclasses.fields(config_class)} == set(PROBES), config_class.__name__


@pytest.mark.parametrize("probe_fn", sorted(set(PROBES.values()), key=lambda f: f.__name__),
                         ids=lambda f: f.__name__.strip("_"))
def test_field_changes_behaviour(probe_fn, tmp_path):
    probe_fn(tmp_path)
