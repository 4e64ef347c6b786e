"""Every DPOConfig field is read and does what its help says (as ``test_every_field.py`` for SFT): one probe per
DPO field; the loop's shared fields are probed there, through the same loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from checkpoints import random_state_dict, tiny_config
from probing import probe_registry
from rwkvtune.config.train import LoopConfig
from rwkvtune.hub import AutoModel
from rwkvtune.training import DPOConfig, DPOTrainer

CONFIG = tiny_config(vocab_size=65536, n_layer=1, n_embd=64, dim_ffn=128, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
BASE = dict(precision="fp32", grad_cp=0, logging_steps=1, max_steps=1, micro_bsz=2, lr_init=1e-2, lr_final=1e-2)
PAIRS = [{"prompt": f"question {i} of {i + 3}", "chosen": f" answer {i}", "rejected": f" no {i + 1}, sorry"}
         for i in range(4)]
PROBES, probe = probe_registry()


def model(seed: int = 2):
    m = AutoModel.from_config(CONFIG, ctx_len=64)
    m.load_state_dict(random_state_dict(CONFIG, seed=seed))
    return m


def run(path: Path, rows=PAIRS, ref_seed: int | None = 3, **overrides) -> list[dict]:
    """The metrics records of a run against a reference of another seed (``None``: the starting policy)."""
    config = DPOConfig(output_dir=str(path), **{**BASE, **overrides})
    ref = None if ref_seed is None or config.reference_free else model(ref_seed)
    DPOTrainer(model(), ref_model=ref, args=config, train_dataset=rows).train()
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def first_loss(path: Path, **overrides) -> float:
    return run(path, **overrides)[0]["loss"]


@probe("micro_bsz")
def _micro_bsz(tmp: Path) -> None:
    assert len(run(tmp / "a", max_steps=None, micro_bsz=2)) == 2 and len(run(tmp / "b", max_steps=None, micro_bsz=1)) == 4


@probe("beta")
def _beta(tmp: Path) -> None:
    a, b = run(tmp / "a", beta=0.1)[0], run(tmp / "b", beta=0.4)[0]
    assert b["rewards/chosen"] == pytest.approx(4 * a["rewards/chosen"], rel=1e-5)


@probe("loss_type", "loss_weights")
def _loss_type(tmp: Path) -> None:
    sigmoid, hinge = first_loss(tmp / "a"), first_loss(tmp / "b", loss_type="hinge")
    both = first_loss(tmp / "c", loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 0.5])
    assert both == pytest.approx(sigmoid + 0.5 * hinge, rel=1e-5)


@probe("label_smoothing")
def _label_smoothing(tmp: Path) -> None:
    plain, smoothed = first_loss(tmp / "a", loss_type="robust"), first_loss(tmp / "b", loss_type="robust",
                                                                            label_smoothing=0.2)
    assert plain != pytest.approx(smoothed)


@probe("discopop_tau")
def _discopop_tau(tmp: Path) -> None:
    assert first_loss(tmp / "a", loss_type="discopop") != pytest.approx(
        first_loss(tmp / "b", loss_type="discopop", discopop_tau=2.0))


@probe("rpo_alpha")
def _rpo_alpha(tmp: Path) -> None:
    plain = run(tmp / "a")[0]
    with_nll = first_loss(tmp / "b", rpo_alpha=0.5)
    assert with_nll > plain["loss"]  # + 0.5 x the chosen tokens' mean NLL


@probe("reference_free")
def _reference_free(tmp: Path) -> None:
    logged = run(tmp, reference_free=True)[0]
    assert logged["rewards/chosen"] == pytest.approx(0.1 * logged["logps/chosen"], rel=1e-5)


@probe("precompute_ref_log_probs")
def _precompute(tmp: Path) -> None:
    trainer = DPOTrainer(model(), args=DPOConfig(output_dir=str(tmp), precompute_ref_log_probs=True, **BASE),
                         train_dataset=PAIRS)
    trainer.train()
    assert trainer._preferences.precomputed["train"].shape == (4, 2)
    assert trainer._reference is None  # the frozen copy was freed once scored


@probe("max_prompt_length", "max_completion_length")
def _lengths(tmp: Path) -> None:
    full = run(tmp / "a")[0]
    cut = run(tmp / "b", max_prompt_length=2, max_completion_length=1)[0]
    assert cut["logps/rejected"] > full["logps/rejected"]  # one token instead of four


@probe("eval_steps")
def _eval_steps(tmp: Path) -> None:
    config = DPOConfig(output_dir=str(tmp), eval_steps=1, **{**BASE, "max_steps": 2})
    DPOTrainer(model(), args=config, train_dataset=PAIRS, eval_dataset=PAIRS[:2]).train()
    logged = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval_loss" in r for r in logged) == 2


@probe("lr_init", "lr_final", "warmup_steps", "epoch_count", "beta2", "adam_eps")
def _dpo_defaults(tmp: Path) -> None:
    """DPO's own defaults for shared fields (TRL's learning rate and AdamW; the loop reads them as for SFT)."""
    from rwkvtune.engine.optim import build_optimizer

    config = DPOConfig()
    assert (config.lr_init, config.lr_final, config.warmup_steps, config.epoch_count) == (1e-6, 1e-7, 0, 1)
    group = build_optimizer(model(), config).param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert run(tmp, lr_init=5e-3, lr_final=5e-3)[0]["lr"] == pytest.approx(5e-3)


@probe("output_dir")
def _output_dir(tmp: Path) -> None:
    run(tmp / "elsewhere")
    assert (tmp / "elsewhere" / "final" / "model.pth").is_file()
    assert DPOConfig().output_dir == "output_dpo"


def test_every_dpo_field_has_a_probe():
    shared = {f.name for f in dataclasses.fields(LoopConfig)}
    dpo_own = {f.name for f in dataclasses.fields(DPOConfig)} - shared
    redefined = {"micro_bsz", "lr_init", "lr_final", "warmup_steps", "epoch_count", "output_dir", "beta2", "adam_eps"}
    assert dpo_own | redefined == set(PROBES)


@pytest.mark.parametrize("probe_fn", sorted(set(PROBES.values()), key=lambda f: f.__name__),
                         ids=lambda f: f.__name__.strip("_"))
def test_dpo_field_changes_behaviour(probe_fn, tmp_path):
    probe_fn(tmp_path)
