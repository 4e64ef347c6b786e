"""Training configs: the seed's defaults, and validation that reports every problem at once."""

import dataclasses
import importlib.util

import pytest

from rwkvtune.config.train import PretrainConfig, SFTConfig

SEED_DEFAULTS = dict(ctx_len=2048, micro_bsz=4, epoch_count=10, epoch_steps=None, epoch_save=1,
                     save_every_n_batches=0, save_total_limit=2, lr_init=3e-4, lr_final=1e-5, warmup_steps=50,
                     accumulate_grad_batches=1, grad_cp=1, grad_clip=1.0, devices=1, precision="bf16",
                     strategy="auto", train_type="normal", resume_from_checkpoint=None, report_to="")


@pytest.mark.parametrize("cls, weight_decay", [(SFTConfig, 0.0), (PretrainConfig, 0.01)])
def test_seed_defaults(cls, weight_decay):
    config = cls()
    for name, value in SEED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.weight_decay == weight_decay


def test_every_field_documents_itself():
    for f in dataclasses.fields(SFTConfig):
        assert f.metadata.get("help"), f.name


def test_seed_snippet_fields_are_accepted():
    config = SFTConfig(ctx_len=2048, micro_bsz=4, epoch_count=3, lr_init=2e-5, lr_final=1e-6, precision="bf16")
    assert config.epoch_count == 3
    assert PretrainConfig(ctx_len=4096, micro_bsz=8, epoch_count=1, lr_init=3e-4).ctx_len == 4096


def test_all_problems_in_one_error():
    with pytest.raises(ValueError) as err:
        SFTConfig(micro_bsz=0, precision="bf32", lr_schedule="step", beta2=1.5, report_to="mlflow")
    text = str(err.value)
    for expected in ("micro_bsz must be an integer >= 1", "precision must be one of bf16, fp16, fp32",
                     "lr_schedule must be one of", "beta2 must be in [0, 1)", "unknown backend 'mlflow'"):
        assert expected in text


def test_deepspeed_without_the_package_names_the_extra(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'rwkvtune\[deepspeed\]'"):
        SFTConfig(strategy="deepspeed_stage_2")


def test_infctx_settings_are_checked_and_config_round_trips():
    SFTConfig(train_type="infctx", ctx_len=1000, chunk_ctx=512)  # a ragged last chunk is fine
    with pytest.raises(ValueError, match=r"chunk_ctx must be an integer >= 1, got 0"):
        SFTConfig(train_type="infctx", chunk_ctx=0)
    with pytest.raises(ValueError, match=r"infctx needs chunk_ctx \(4096\) <= ctx_len \(2048\)"):
        SFTConfig(train_type="infctx", ctx_len=2048, chunk_ctx=4096)
    with pytest.raises(ValueError, match="infctx runs on one device or under DDP .* not 'fsdp'"):
        SFTConfig(train_type="infctx", strategy="fsdp")
    SFTConfig(ctx_len=256)  # chunk_ctx (512) only matters for infctx
    config = SFTConfig(micro_bsz=2, lr_schedule="linear")
    assert SFTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown SFTConfig fields: proj_dirr"):
        SFTConfig.from_dict({"proj_dirr": "x"})
