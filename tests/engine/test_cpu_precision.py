"""A bf16 run on a CPU that emulates bf16 says so at start, with the measured slowdown and the fix."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import rwkvtune.engine.cpu_precision as cpu_precision
from rwkvtune.engine.cpu_precision import SlowBF16Warning, matmul_rate, warn_if_bf16_is_slow


def test_rates_are_measured_for_both_dtypes():
    for dtype in (torch.bfloat16, torch.float32):
        rate = matmul_rate(dtype, size=64, repeats=2)
        assert math.isfinite(rate) and rate > 1e6, dtype


def fake_rates(monkeypatch, bf16: float, fp32: float) -> list[torch.dtype]:
    measured = []

    def rate(dtype, **kwargs):
        measured.append(dtype)
        return {torch.bfloat16: bf16, torch.float32: fp32}[dtype]
    monkeypatch.setattr(cpu_precision, "matmul_rate", rate)
    return measured


def test_emulated_bf16_is_named_with_its_slowdown(monkeypatch):
    fake_rates(monkeypatch, bf16=1.35e9, fp32=77e9)  # an AVX2-only EPYC, one thread
    with pytest.warns(SlowBF16Warning, match=r"ran 57x slower than in fp32 here \(1.4 vs 77.0 GFLOP/s\).*"
                                             r"use precision='fp32'"):
        warn_if_bf16_is_slow()


@pytest.mark.parametrize("bf16, fp32", [(740e9, 200e9), (50e9, 100e9)])  # AMX; a 2x gap is not emulation
def test_native_bf16_is_not_warned_about(monkeypatch, bf16, fp32):
    fake_rates(monkeypatch, bf16, fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_bf16_is_slow()


def test_training_checks_only_bf16_runs(monkeypatch, tmp_path):
    from checkpoints import random_state_dict, tiny_config
    from rwkvtune.model import RWKV7
    from rwkvtune.training import SFTConfig, SFTTrainer

    def model() -> RWKV7:
        config = tiny_config(n_layer=1, n_embd=64, dim_ffn=128)
        m = RWKV7(config)
        m.load_state_dict(random_state_dict(config))
        return m
    rows = [{"input_ids": list(range(1, 17))}] * 4
    measured = fake_rates(monkeypatch, bf16=1e9, fp32=80e9)
    base = dict(ctx_len=32, micro_bsz=4, max_steps=1, accelerator="cpu", grad_cp=0, precision="fp32")
    SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "fp32"), **base), train_dataset=rows).train()
    assert measured == []
    with pytest.warns(SlowBF16Warning, match="80x slower"):
        SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "bf16"), **{**base, "precision": "bf16"}),
                   train_dataset=rows).train()
