"""Advantages and losses against TRL 1.16's own numbers (``data/grpo_vectors.json``, produced by running
TRL's ``GRPOTrainer._compute_loss`` and ``_generate_and_score_completions``; see the spec's section 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rwkvtune.grpo import GRPOLossSettings, compute_advantages, grpo_loss

VECTORS = json.loads((Path(__file__).parent / "data" / "grpo_vectors.json").read_text())
INPUTS = VECTORS["inputs"]
G = INPUTS["num_generations"]
ATOL = 1e-10


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def rewards_matrix(rows) -> torch.Tensor:
    return tensor([[float("nan") if v is None else v for v in row] for row in rows])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_of_the_fixed_example(scale):
    advantages, stats = compute_advantages(tensor(INPUTS["rewards"])[:, None], G, scale_rewards=scale)
    assert torch.allclose(advantages, tensor(VECTORS["advantages"][scale]), atol=ATOL, rtol=0)
    metrics = VECTORS["generation_metrics"]
    assert stats.reward_mean == pytest.approx(metrics["reward"], abs=ATOL)
    assert stats.reward_std == pytest.approx(metrics["reward_std"], abs=ATOL)


@pytest.mark.parametrize("case", VECTORS["advantage_cases"], ids=lambda c: c["id"])
def test_advantage_cases(case):
    advantages, stats = compute_advantages(
        rewards_matrix(case["rewards_per_func"]), G, weights=tensor(case["reward_weights"]),
        scale_rewards=case["scale_rewards"], multi_objective_aggregation=case["multi_objective_aggregation"])
    assert torch.allclose(advantages, tensor(case["advantages"]), atol=ATOL, rtol=0)
    metrics = case.get("metrics", case)
    assert stats.frac_reward_zero_std == pytest.approx(metrics["frac_reward_zero_std"], abs=ATOL)
    assert stats.reward_mean == pytest.approx(metrics.get("reward", metrics.get("reward_mean")), abs=ATOL)
    assert stats.reward_std == pytest.approx(metrics["reward_std"], abs=ATOL)
    names = [k.split("/")[1] for k in metrics if k.startswith("rewards/") and k.endswith("/mean")]
    for j, name in enumerate(names):
        assert float(stats.per_function_mean[j]) == pytest.approx(metrics[f"rewards/{name}/mean"], abs=ATOL)
        assert float(stats.per_function_std[j]) == pytest.approx(metrics[f"rewards/{name}/std"], abs=ATOL)


def settings_of(config: dict) -> GRPOLossSettings:
    known = {k: v for k, v in config.items() if k in GRPOLossSettings.__dataclass_fields__}
    known.setdefault("epsilon", INPUTS["epsilon"])
    known.setdefault("epsilon_high", INPUTS["epsilon_high"])
    return GRPOLossSettings(max_completion_length=INPUTS["max_completion_length"], **known)


def run_case(config: dict, rows: list[int] | None = None, mask=None, num_items=None):
    """The loss of ``rows`` of the example under ``config``, and d loss / d logps over all rows."""
    logps = tensor(INPUTS["per_token_logps"]).requires_grad_()
    mask = tensor(INPUTS["completion_mask"] if mask is None else mask)
    old = None if "old_per_token_logps" in config and config["old_per_token_logps"] is None \
        else tensor(INPUTS["old_per_token_logps"])
    advantages = tensor(VECTORS["advantages"][config.get("scale_rewards", "group")])
    rows = list(range(len(mask))) if rows is None else rows
    loss, metrics = grpo_loss(
        logps[rows], mask[rows], advantages[rows], settings_of(config),
        old_logps=None if old is None else old[rows], ref_logps=tensor(INPUTS["ref_per_token_logps"])[rows],
        entropies=tensor(INPUTS["entropies"])[rows],
        num_items_in_batch=INPUTS["num_items_in_batch"] if num_items is None else num_items,
        grad_accum=config.get("grad_accum", 1), steps_per_generation=config.get("steps_per_generation", 1))
    loss.backward()
    return loss, logps.grad, metrics


def check_metrics(got: dict, want: dict) -> None:
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name  # TRL logs the clip ratios in float32


@pytest.mark.parametrize("case", VECTORS["loss_cases_main"], ids=lambda c: c["id"])
def test_main_loss_grid(case):
    loss, grad, metrics = run_case(case["config"])
    assert float(loss.detach()) == pytest.approx(case["loss"], abs=ATOL)
    assert torch.allclose(grad, tensor(case["grad_wrt_per_token_logps"]), atol=ATOL, rtol=0)
    check_metrics(metrics, case["metrics"])


SINGLE = [c for c in VECTORS["loss_cases_extra"] if "micro_batch_rows" not in c]
MULTI = [c for c in VECTORS["loss_cases_extra"] if "micro_batch_rows" in c]


@pytest.mark.parametrize("case", SINGLE, ids=lambda c: c["id"])
def test_extra_loss_cases(case):
    mask = case.get("effective_completion_mask")
    loss, grad, metrics = run_case(case["config"], mask=mask, num_items=case.get("num_items_in_batch"))
    assert float(loss.detach()) == pytest.approx(case["loss"], abs=ATOL)
    assert torch.allclose(grad, tensor(case["grad_wrt_per_token_logps"]), atol=ATOL, rtol=0)
    check_metrics(metrics, case["metrics"])


@pytest.mark.parametrize("case", MULTI, ids=lambda c: c["id"])
def test_accumulation_and_steps_per_generation(case):
    logps = tensor(INPUTS["per_token_logps"]).requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for rows, want_loss, want_metrics in zip(case["micro_batch_rows"], case["micro_batch_losses"], case["metrics"]):
        loss, metrics = grpo_loss(
            logps[rows], tensor(INPUTS["completion_mask"])[rows], tensor(VECTORS["advantages"]["group"])[rows],
            settings_of(case["config"]), old_logps=tensor(INPUTS["old_per_token_logps"])[rows],
            ref_logps=tensor(INPUTS["ref_per_token_logps"])[rows], entropies=tensor(INPUTS["entropies"])[rows],
            num_items_in_batch=INPUTS["num_items_in_batch"], grad_accum=case["config"]["grad_accum"],
            steps_per_generation=case["config"]["steps_per_generation"])
        assert float(loss.detach()) == pytest.approx(want_loss, abs=ATOL)
        check_metrics(metrics, want_metrics)
        total = total + loss
    total.backward()
    assert float(total.detach()) == pytest.approx(case["accumulated_loss_sum"], abs=ATOL)
    assert torch.allclose(logps.grad, tensor(case["grad_wrt_per_token_logps"]), atol=ATOL, rtol=0)


def test_padding_values_never_matter():
    junk = tensor(INPUTS["per_token_logps"])
    mask = tensor(INPUTS["completion_mask"])
    for fill in (float("inf"), -1e30, 123.0):
        logps = torch.where(mask.bool(), junk, torch.full_like(junk, fill)).requires_grad_()
        loss, _ = grpo_loss(logps, mask, tensor(VECTORS["advantages"]["group"]),
                            GRPOLossSettings(loss_type="dapo", beta=0.04, epsilon_high=0.28),
                            old_logps=tensor(INPUTS["old_per_token_logps"]),
                            ref_logps=tensor(INPUTS["ref_per_token_logps"]), num_items_in_batch=27)
        loss.backward()
        assert torch.isfinite(logps.grad).all() and (logps.grad[~mask.bool()] == 0).all()
        assert float(loss.detach()) == pytest.approx(VECTORS["loss_cases_main"][[c["id"] for c in VECTORS["loss_cases_main"]]
                                                                        .index("main/dapo/beta=0.04/group")]["loss"],
                                            abs=ATOL)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "sapo", "luspo", "cispo", "vespo"])
def test_a_micro_batch_split_in_pieces_adds_up_to_the_whole(loss_type):
    config = {"loss_type": loss_type, "beta": 0.04, "entropy_coef": 0.01}
    whole, grad, _ = run_case(config)
    logps = tensor(INPUTS["per_token_logps"]).requires_grad_()
    mask = tensor(INPUTS["completion_mask"])
    total = 0
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):  # logprob_batch_size = 4: two forwards of one prompt group each
        loss, _ = grpo_loss(logps[rows], mask[rows], tensor(VECTORS["advantages"]["group"])[rows], settings_of(config),
                            old_logps=tensor(INPUTS["old_per_token_logps"])[rows],
                            ref_logps=tensor(INPUTS["ref_per_token_logps"])[rows],
                            entropies=tensor(INPUTS["entropies"])[rows], num_items_in_batch=27,
                            batch_rows=8, batch_tokens=float(mask.sum()))
        total = total + loss
    total.backward()
    assert float(total.detach()) == pytest.approx(float(whole.detach()), abs=ATOL)
    assert torch.allclose(logps.grad, grad, atol=ATOL, rtol=0)


def test_entropy_mask_over_no_active_token_keeps_nothing():
    logps = tensor(INPUTS["per_token_logps"]).requires_grad_()
    loss, metrics = grpo_loss(logps, torch.zeros(8, 5, dtype=torch.float64), tensor(VECTORS["advantages"]["group"]),
                              GRPOLossSettings(top_entropy_quantile=0.5, entropy_coef=0.1),
                              entropies=tensor(INPUTS["entropies"]), num_items_in_batch=0)
    assert float(loss.detach()) == 0.0 and metrics["entropy"] == 0.0
