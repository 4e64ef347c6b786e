"""DPO losses against TRL 1.16's own numbers (``data/dpo_vectors.json``, produced by running TRL's
``DPOTrainer._compute_loss`` on prepared log-probs; ``data/make_dpo_vectors.py`` says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rwkvtune.dpo import LOSS_ALIASES, LOSS_TYPES, DPOLossSettings, DPOTerms, check_settings, dpo_loss

VECTORS = json.loads((Path(__file__).parent / "data" / "dpo_vectors.json").read_text())
INPUTS = VECTORS["inputs"]
CASES = VECTORS["cases"]
ATOL = 1e-10


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def settings_of(case: dict, **overrides) -> DPOLossSettings:
    return DPOLossSettings(**(case["settings"] | overrides))


def run(case: dict, settings: DPOLossSettings | None = None, *, zero_reference: bool | None = None,
        refs: bool = True, junk: float | None = None, int_masks: bool = False):
    """Our loss on the case's inputs, and d loss / d the chosen and rejected token log-probs."""
    inp = INPUTS[case["inputs"]]
    chosen_mask, rejected_mask = torch.tensor(inp["chosen_mask"]), torch.tensor(inp["rejected_mask"])
    chosen, rejected = tensor(inp["chosen_token_logps"]), tensor(inp["rejected_token_logps"])
    if junk is not None:  # padding holding inf / nan must not matter
        chosen, rejected = chosen.masked_fill(~chosen_mask, junk), rejected.masked_fill(~rejected_mask, junk)
    chosen.requires_grad_()
    rejected.requires_grad_()
    zero = case["zero_reference"] if zero_reference is None else zero_reference
    ref_chosen, ref_rejected = tensor(inp["ref_chosen_logps"]), tensor(inp["ref_rejected_logps"])
    if zero:
        ref_chosen, ref_rejected = torch.zeros_like(ref_chosen), torch.zeros_like(ref_rejected)
    if not refs:
        ref_chosen = ref_rejected = None
    if int_masks:
        chosen_mask, rejected_mask = chosen_mask.long(), rejected_mask.long()
    loss, terms = dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected,
                           settings_of(case) if settings is None else settings)
    loss.backward()
    # a loss that never reads a tensor (sft and the rejected answers) leaves its grad None: TRL's is zero there
    grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in (chosen, rejected)]
    return loss, *grads, terms


def assert_matches(case: dict, loss, chosen_grad, rejected_grad) -> None:
    expected = case["expected"]
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert loss.item() == pytest.approx(expected["loss"], abs=ATOL, rel=0)
    assert torch.allclose(chosen_grad, tensor(expected["chosen_grad"]), atol=ATOL, rtol=0)
    assert torch.allclose(rejected_grad, tensor(expected["rejected_grad"]), atol=ATOL, rtol=0)


def cases_where(predicate) -> list[dict]:
    found = [c for c in CASES if predicate(c)]
    assert found
    return found


def test_the_vectors_cover_every_loss_type():
    covered = {t for c in CASES for t in c["settings"]["loss_type"]}
    assert covered == set(LOSS_TYPES)
    assert VECTORS["source"].startswith("trl 1.16.0 ")
    assert any(len(c["settings"].get("loss_weights") or []) > 2 for c in CASES)
    lengths = {n for inp in INPUTS.values() for m in inp["chosen_mask"] + inp["rejected_mask"] for n in [sum(m)]}
    assert 1 in lengths


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_loss_and_gradients_equal_trl(case):
    loss, chosen_grad, rejected_grad, terms = run(case)
    assert_matches(case, loss, chosen_grad, rejected_grad)
    # the logged terms: TRL logs their batch means
    metrics = case["expected"]["metrics"]
    for name, value in [("rewards/chosen", terms.chosen_rewards), ("rewards/rejected", terms.rejected_rewards),
                        ("rewards/margins", terms.margins), ("rewards/accuracies", terms.accuracies),
                        ("logps/chosen", terms.chosen_logps), ("logps/rejected", terms.rejected_logps)]:
        # TRL averages the accuracies in float32
        tolerance = 1e-7 if name == "rewards/accuracies" else ATOL
        assert value.mean().item() == pytest.approx(metrics[name], abs=tolerance, rel=0), name


@pytest.mark.parametrize("case", CASES[:: 7], ids=lambda c: c["id"])
@pytest.mark.parametrize("junk", [float("inf"), float("-inf"), float("nan")])
def test_padding_values_do_not_matter(case, junk):
    loss, chosen_grad, rejected_grad, _ = run(case, junk=junk, int_masks=True)
    assert_matches(case, loss, chosen_grad, rejected_grad)


@pytest.mark.parametrize("case", cases_where(lambda c: c["id"].startswith("sigmoid+sft-w0.5-")),
                         ids=lambda c: c["id"])
def test_rpo_alpha_is_a_weighted_sft_term(case):
    settings = DPOLossSettings(loss_type=("sigmoid",), rpo_alpha=0.5, reference_free=case["zero_reference"])
    loss, chosen_grad, rejected_grad, _ = run(case, settings)
    assert_matches(case, loss, chosen_grad, rejected_grad)


@pytest.mark.parametrize("case", cases_where(lambda c: c["zero_reference"]), ids=lambda c: c["id"])
@pytest.mark.parametrize("refs", [True, False], ids=["refs_ignored", "refs_none"])
def test_reference_free_is_a_zero_reference(case, refs):
    loss, chosen_grad, rejected_grad, terms = run(case, settings_of(case, reference_free=True),
                                                  zero_reference=False, refs=refs)
    assert_matches(case, loss, chosen_grad, rejected_grad)
    assert torch.equal(terms.chosen_rewards, case["settings"].get("beta", 0.1) * terms.chosen_logps)


@pytest.mark.parametrize("case", cases_where(lambda c: "aot_unpaired" in c["settings"]["loss_type"]),
                         ids=lambda c: c["id"])
def test_aot_pair_is_aot_unpaired(case):
    old_names = [{v: k for k, v in LOSS_ALIASES.items()}.get(t, t) for t in case["settings"]["loss_type"]]
    assert "aot_pair" in old_names
    settings = settings_of(case, loss_type=old_names)
    assert settings.loss_type == tuple(case["settings"]["loss_type"])
    loss, chosen_grad, rejected_grad, _ = run(case, settings)
    assert_matches(case, loss, chosen_grad, rejected_grad)


def test_terms_are_detached_per_pair_tensors():
    case = cases_where(lambda c: c["id"] == "sigmoid-b4")[0]
    _, _, _, terms = run(case)
    assert isinstance(terms, DPOTerms)
    for value in (terms.chosen_logps, terms.rejected_logps, terms.chosen_rewards, terms.rejected_rewards):
        assert value.shape == (4,) and not value.requires_grad and value.dtype == torch.float64


def test_settings_normalise_names_and_lists():
    settings = DPOLossSettings(loss_type="aot_pair", loss_weights=[2])
    assert settings.loss_type == ("aot_unpaired",) and settings.loss_weights == (2.0,)
    assert DPOLossSettings(loss_type=["sigmoid", "sft"]).weights == (1.0, 1.0)
    assert check_settings(DPOLossSettings()) == []
    assert check_settings(DPOLossSettings(loss_type=("exo_pair",), label_smoothing=1e-3)) == []
    assert check_settings(DPOLossSettings(loss_type=LOSS_TYPES, label_smoothing=0.1, rpo_alpha=0.0)) == []


@pytest.mark.parametrize("overrides, words", [
    ({"loss_type": ("sigmoid", "kto_pair")}, ["'kto_pair'", "valid: sigmoid, hinge", "'aot_pair'"]),
    ({"loss_type": ()}, ["loss_type is empty"]),
    ({"loss_type": ("sigmoid", "sft"), "loss_weights": (1.0,)}, ["got 1 weight(s) for 2 loss type(s)"]),
    ({"loss_weights": (float("nan"),)}, ["loss_weights must be finite"]),
    ({"beta": 0.0}, ["beta must be > 0, got 0.0"]),
    ({"beta": -0.1}, ["beta must be > 0"]),
    ({"label_smoothing": 0.5}, ["label_smoothing must lie in [0, 0.5), got 0.5"]),
    ({"label_smoothing": -0.1}, ["label_smoothing must lie in [0, 0.5)"]),
    ({"loss_type": ("exo_pair",)}, ["'exo_pair' loss needs label_smoothing > 0"]),
    ({"discopop_tau": 0.0}, ["discopop_tau must be > 0"]),
    ({"rpo_alpha": -1.0}, ["rpo_alpha must be >= 0"]),
])
def test_check_settings_names_the_problem(overrides, words):
    settings = DPOLossSettings(**overrides)
    problems = check_settings(settings)
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0]
    case = CASES[0]
    with pytest.raises(ValueError, match="invalid DPO loss settings"):
        run(case, settings)


def test_a_reference_is_required_unless_reference_free():
    with pytest.raises(ValueError, match="reference_free"):
        run(CASES[0], refs=False)
