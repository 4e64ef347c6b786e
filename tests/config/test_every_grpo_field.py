"""Every GRPOConfig field is read and does what its help says (as ``test_every_field.py`` for SFT): one probe
per GRPO field; the loop's shared fields are probed there, through the same loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from probing import probe_registry
from rwkvtune.config.train import LoopConfig
from rwkvtune.grpo import sampling
from rwkvtune.hub import AutoModel
from rwkvtune.training import GRPOConfig, GRPOTrainer
from rwkvtune.training import grpo as grpo_module

CONFIG = tiny_config(vocab_size=65536, n_layer=1, n_embd=64, dim_ffn=128, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
BASE = dict(precision="fp32", grad_cp=0, logging_steps=1, max_completion_length=6, num_generations=4, max_steps=1,
            save_rollout_steps=1, lr_init=1e-2, lr_final=1e-2)
PROBES, probe = probe_registry()


def model():
    m = AutoModel.from_config(CONFIG, ctx_len=64)
    m.load_state_dict(random_state_dict(CONFIG, seed=2))
    m.generation_config["stop_token_ids"] = list(range(0, 65536, 40))
    return m


PROMPTS = [{"prompt": f"question {i} of {i + 3}", "tag": i} for i in range(4)]


def length_reward(completions, **kwargs):
    return [float(len(c) % 4) for c in completions]


def alternating_reward(completions, **kwargs):
    return [None if i % 3 == 2 else float(i % 2) for i in range(len(completions))]  # None: does not apply


def run(path: Path, rewards=length_reward, **overrides) -> tuple[list[dict], list[dict]]:
    """(metrics records, records of the first saved rollout)."""
    config = GRPOConfig(output_dir=str(path), **{**BASE, **overrides})
    GRPOTrainer(model(), rewards, config, train_dataset=PROMPTS).train()
    rollouts = sorted((Path(config.save_rollout_path or path / "rollouts")).glob("*.jsonl"))
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    return read(path / "metrics.jsonl"), read(rollouts[0]) if rollouts else []


def plan(**overrides) -> list[list[dict]]:
    return grpo_module.plan_rollout_windows(len(PROMPTS * 2), GRPOConfig(**{**BASE, **overrides}), epoch=0, rank=0,
                                            world_size=1)


@probe("micro_bsz", "steps_per_generation", "num_iterations")
def _batching(tmp: Path) -> None:
    assert len(plan()) == 8  # 8 prompts, one per micro-step
    assert len(plan(micro_bsz=2)) == 4
    items = [item for window in plan(steps_per_generation=2, num_iterations=3) for item in window]
    assert len(items) == 24 and [item["slice"] for item in items[:6]] == [0, 1, 0, 1, 0, 1]
    assert {item["rollout"] for item in items[:6]} == {0}
    assert [item["prompts"] for item in items[:2]] == [(0, 1), (1, 2)]  # each slice's prompts in its rollout


@probe("num_generations", "max_completion_length")
def _group(tmp: Path) -> None:
    _, rows = run(tmp, num_generations=3, max_completion_length=2)
    assert len(rows) == 3 and all(r["completion_length"] <= 2 for r in rows)


@probe("max_prompt_length")
def _prompt_length(tmp: Path) -> None:
    _, rows = run(tmp, max_prompt_length=2)
    assert len(rows[0]["prompt_ids"]) == 2


@probe("temperature", "top_p", "top_k", "repetition_penalty", "prefill_chunk_size", "max_prefill_batch_size",
       "max_decode_batch_size")
def _sampling(tmp: Path) -> None:
    seen = {}
    original = sampling.generate

    def spy(model, prompts, params, tokenizer, **kwargs):
        seen.update(params=params, **kwargs)
        return original(model, prompts, params, tokenizer, **kwargs)

    sampling.generate = spy
    try:
        metrics, _ = run(tmp / "a", top_k=1, repetition_penalty=1.3, temperature=0.5, top_p=0.9,
                         prefill_chunk_size=3, max_prefill_batch_size=1, max_decode_batch_size=2)
    finally:
        sampling.generate = original
    params = seen["params"]
    assert (params.top_k, params.repetition_penalty, params.temperature, params.top_p) == (1, 1.3, 0.5, 0.9)
    assert (seen["prefill_chunk_size"], seen["max_prefill_batch_size"], seen["max_decode_batch_size"]) == (3, 1, 2)
    assert metrics[0]["frac_reward_zero_std"] == 1.0  # top_k=1: every completion of a prompt is the same
    hot, _ = run(tmp / "b", temperature=2.0)
    assert hot[0]["entropy"] > metrics[0]["entropy"]  # the training log-probs use the temperature too


@probe("loss_type", "epsilon", "epsilon_high", "delta", "importance_sampling_level", "use_bias_correction_kl",
       "top_entropy_quantile", "off_policy_mask_threshold", "entropy_coef", "sapo_temperature_pos",
       "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")
def _loss_settings(tmp: Path) -> None:
    """Each reaches the loss (whose every option tests/grpo checks against TRL's numbers)."""
    values = dict(loss_type="cispo", epsilon=0.3, epsilon_high=4.0, delta=2.0, importance_sampling_level="sequence",
                  use_bias_correction_kl=False, top_entropy_quantile=0.5, off_policy_mask_threshold=0.1,
                  entropy_coef=0.02, sapo_temperature_pos=1.5, sapo_temperature_neg=1.6, vespo_k_pos=2.5,
                  vespo_lambda_pos=3.5, vespo_k_neg=3.5, vespo_lambda_neg=2.5)
    settings = grpo_module.loss_settings(GRPOConfig(**{**BASE, **values}))
    assert {name: getattr(settings, name) for name in values} == values
    metrics, _ = run(tmp, entropy_coef=0.5)
    assert metrics[0]["entropy_coef"] == 0.5 and "policy_loss" in metrics[0]


@probe("scale_rewards", "reward_weights", "multi_objective_aggregation")
def _advantages(tmp: Path) -> None:
    def advantages(name, **change):
        return [r["advantage"] for r in run(tmp / name, rewards=[length_reward, alternating_reward], **change)[1]]
    base = advantages("group")
    assert base != advantages("none", scale_rewards="none")
    assert base != advantages("weights", reward_weights=[1.0, 3.0])
    assert base != advantages("gdpo", multi_objective_aggregation="normalize_then_sum")


@probe("advantage_clip", "low_reward_threshold", "low_reward_scale")
def _advantage_shaping(tmp: Path) -> None:
    config = GRPOConfig(num_generations=2, advantage_clip=0.5, low_reward_threshold=1.0, low_reward_scale=0.1)
    shaped = sampling.shape_advantages(torch.tensor([2.0, -2.0, 0.8, -0.8]),
                                       torch.tensor([0.9, 0.1, 3.0, 1.0]), config)
    assert shaped.tolist() == pytest.approx([0.2, -0.2, 0.5, -0.5])  # group 0's best (0.9) < 1: x0.1


@probe("beta")
def _beta(tmp: Path) -> None:
    assert "kl" not in run(tmp / "a")[0][0] and run(tmp / "b", beta=0.1)[0][0]["kl"] == 0.0


@probe("mask_truncated_completions")
def _mask_truncated(tmp: Path) -> None:
    _, rows = run(tmp, mask_truncated_completions=True, max_completion_length=1)
    assert all(r["completion_length"] == 0 for r in rows if r["finish_reason"] == "length")


@probe("save_rollout_steps", "save_rollout_path")
def _rollout_files(tmp: Path) -> None:
    run(tmp / "a", save_rollout_steps=2, max_steps=2, save_rollout_path=str(tmp / "where"))
    assert [p.name for p in (tmp / "where").iterdir()] == ["rollouts_step000002.jsonl"]
    run(tmp / "b", save_rollout_steps=0)
    assert not (tmp / "b" / "rollouts").exists()


@probe("log_completions", "num_completions_to_print")
def _log_completions(tmp: Path) -> None:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run(tmp, log_completions=True, num_completions_to_print=3)
    assert out.getvalue().count("[reward ") == 3


@probe("logprob_batch_size")
def _logprob_batch_size(tmp: Path) -> None:
    calls = []
    original = grpo_module.score_continuations

    def spy(model, prompt_ids, *args, **kwargs):
        calls.append(len(prompt_ids))
        return original(model, prompt_ids, *args, **kwargs)

    grpo_module.score_continuations = spy
    try:
        whole, _ = run(tmp / "a", micro_bsz=2)
        whole_calls, calls[:] = list(calls), []
        split, _ = run(tmp / "b", micro_bsz=2, logprob_batch_size=4)
    finally:
        grpo_module.score_continuations = original
    assert whole_calls == [2] and calls == [1, 1]  # one forward of 2 prompt groups, then two of one
    assert split[0]["loss"] == pytest.approx(whole[0]["loss"], abs=1e-6)


@probe("lr_init", "lr_final", "warmup_steps", "epoch_count", "beta2", "adam_eps")
def _grpo_defaults(tmp: Path) -> None:
    """GRPO's own defaults for shared fields (TRL's learning rate and AdamW; the loop reads them as for SFT)."""
    from rwkvtune.engine.optim import build_optimizer

    config = GRPOConfig()
    assert (config.lr_init, config.lr_final, config.warmup_steps, config.epoch_count) == (1e-6, 1e-7, 0, 1)
    group = build_optimizer(model(), config).param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    metrics, _ = run(tmp, lr_init=5e-3, lr_final=5e-3, warmup_steps=0)
    assert metrics[0]["lr"] == pytest.approx(5e-3)


@probe("output_dir")
def _output_dir(tmp: Path) -> None:
    run(tmp / "elsewhere")
    assert (tmp / "elsewhere" / "final" / "model.pth").is_file()


def test_every_grpo_field_has_a_probe():
    shared = {f.name for f in dataclasses.fields(LoopConfig)}
    grpo_own = {f.name for f in dataclasses.fields(GRPOConfig)} - shared
    redefined = {"micro_bsz", "lr_init", "lr_final", "warmup_steps", "epoch_count", "output_dir", "beta2", "adam_eps"}
    assert grpo_own | redefined == set(PROBES)


@pytest.mark.parametrize("probe_fn", sorted(set(PROBES.values()), key=lambda f: f.__name__),
                         ids=lambda f: f.__name__.strip("_"))
def test_grpo_field_changes_behaviour(probe_fn, tmp_path):
    probe_fn(tmp_path)
