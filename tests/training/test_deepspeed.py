"""DeepSpeed ZeRO strategies through the trainers, run on the CPU: they train what plain training trains
(gradient accumulation and clipping included), resume exactly, and export whole fp32 master weights.

Lightning Fabric's ``DeepSpeedStrategy`` only accepts CUDA accelerators, while DeepSpeed itself has a CPU
accelerator (gloo and its shared-memory collectives). The ``deepspeed_on_cpu`` fixture lifts Fabric's
three CUDA-only checks so that the whole integration (engine set-up, ZeRO partitioning, accumulation
boundaries, engine checkpoints, gathering for export) runs here; nothing in the library is patched.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from test_trainers import metrics, random_rows, small_model, _weights
from rwkvtune.training import SFTConfig, SFTTrainer

pytest.importorskip("deepspeed")

# adam_eps=1e-2: with RWKV-LM's 1e-18, Adam turns summation-order rounding of near-zero gradients into
# whole lr-sized steps, which would hide the comparison below in noise.
COMMON = dict(ctx_len=32, micro_bsz=2, accumulate_grad_batches=2, epoch_count=1, precision="fp32", grad_cp=0,
              warmup_steps=1, logging_steps=1, lr_init=1e-3, lr_final=1e-4, grad_clip=0.05, adam_eps=1e-2,
              epoch_save=0, accelerator="cpu")


@pytest.fixture
def deepspeed_on_cpu(monkeypatch):
    import lightning_fabric.strategies.deepspeed as fabric_deepspeed
    from lightning_fabric.strategies import DeepSpeedStrategy
    from lightning_fabric.strategies.ddp import DDPStrategy

    monkeypatch.setattr(DeepSpeedStrategy, "setup_environment", DDPStrategy.setup_environment)
    monkeypatch.setattr(fabric_deepspeed, "_validate_device_index_selection", lambda devices: None)
    # DeepSpeed reads a device index; "cpu:0" is the CPU.
    monkeypatch.setattr(DeepSpeedStrategy, "root_device", property(lambda self: torch.device("cpu", 0)))
    environment = dict(os.environ)
    yield
    # The strategy sets MASTER_PORT & co. for its one-process group, which stays up (DeepSpeed caches it;
    # the next test here reuses it). Child processes of later tests must not inherit that port.
    os.environ.clear()
    os.environ.update(environment)


def train(output_dir, strategy: str, frozen: tuple[str, ...] = (), vocab: int = 1000, **overrides) -> dict:
    config = SFTConfig(output_dir=str(output_dir), strategy=strategy, **{**COMMON, **overrides})
    model = small_model(vocab)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    return SFTTrainer(model, config, train_dataset=random_rows(16, seed=3)).train()


@pytest.mark.parametrize("strategy", ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3",
                                      "deepspeed_stage_2_offload", "deepspeed_stage_3_offload"])
def test_zero_trains_what_plain_training_trains(strategy, deepspeed_on_cpu, tmp_path):
    train(tmp_path / "plain", "auto")
    train(tmp_path / "zero", strategy)
    plain, zero = metrics(tmp_path / "plain"), metrics(tmp_path / "zero")
    assert len(zero) == 4  # 16 rows / (2 x 2) per step
    # Before the accumulation boundary was passed to DeepSpeed, the first micro-batch of every step was
    # lost: losses drifted by 1e-2 within these 4 steps.
    assert [m["loss"] for m in zero] == pytest.approx([m["loss"] for m in plain], abs=1e-5)
    w_plain, w_zero = _weights(tmp_path / "plain"), _weights(tmp_path / "zero")
    assert w_zero.keys() == w_plain.keys()
    for key in w_plain:  # ZeRO-3 shards every parameter: the export must gather them whole
        assert w_zero[key].shape == w_plain[key].shape, key
        torch.testing.assert_close(w_zero[key], w_plain[key], atol=1e-6, rtol=0)


def test_zero3_resume_continues_exactly(deepspeed_on_cpu, tmp_path):
    train(tmp_path / "a", "deepspeed_stage_3")
    b = tmp_path / "b"
    train(b, "deepspeed_stage_3", save_every_n_batches=2)
    for name in ("batch4", "final"):
        shutil.rmtree(b / name)
    (b / "metrics.jsonl").write_text("")
    result = train(b, "deepspeed_stage_3", save_every_n_batches=2, resume_from_checkpoint="latest")
    assert result["step"] == 4
    first, resumed = metrics(tmp_path / "a"), metrics(b)
    assert [m["step"] for m in resumed] == [3, 4]
    for m in resumed:
        assert m["loss"] == pytest.approx(first[m["step"] - 1]["loss"], abs=1e-6)
    wa, wb = _weights(tmp_path / "a"), _weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)


def test_bf16_exports_the_fp32_master_weights(deepspeed_on_cpu, tmp_path):
    train(tmp_path / "plain", "auto", precision="bf16")
    train(tmp_path / "zero", "deepspeed_stage_2", precision="bf16")
    # DeepSpeed's bf16 mode computes with a bf16 copy of the module (Fabric's mixed mode autocasts), so
    # the two agree only to bf16 rounding.
    plain, zero = metrics(tmp_path / "plain"), metrics(tmp_path / "zero")
    assert [m["loss"] for m in zero] == pytest.approx([m["loss"] for m in plain], abs=1e-2)
    weights = _weights(tmp_path / "zero")
    assert all(w.dtype == torch.float32 for w in weights.values())  # the model came in fp32
    # The 16-bit module copy would round every weight to bf16; the optimizer's fp32 masters do not.
    assert not all(torch.equal(w, w.bfloat16().float()) for w in weights.values())


def test_zero3_exports_frozen_parameters_whole(deepspeed_on_cpu, tmp_path):
    # ZeRO-3 keeps parameters under 1e5 elements whole; a 2000 x 64 embedding is partitioned.
    frozen = ("emb.weight", "blocks.0.att.key.weight")
    train(tmp_path / "plain", "auto", frozen=frozen, vocab=2000)
    train(tmp_path / "zero", "deepspeed_stage_3", frozen=frozen, vocab=2000)
    w_plain, w_zero, start = _weights(tmp_path / "plain"), _weights(tmp_path / "zero"), small_model(2000).state_dict()
    for key in w_plain:  # a frozen parameter has no master copy: it is gathered from the module's shards
        torch.testing.assert_close(w_zero[key], w_plain[key], atol=1e-6, rtol=0)
    for key in frozen:
        assert torch.equal(w_zero[key], start[key])
