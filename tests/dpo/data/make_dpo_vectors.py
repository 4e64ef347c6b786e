"""Write ``dpo_vectors.json``: DPO losses and gradients computed by TRL 1.16's own ``DPOTrainer._compute_loss``.

This is a one-off generator; the test suite reads only the JSON it writes and never imports TRL.

How TRL's code is driven: a bare trainer is made with ``object.__new__(trl.DPOTrainer)`` (no ``__init__``, so no
model, tokenizer or dataset is needed), and given the attributes ``_compute_loss`` reads, taken from a real
``trl.DPOConfig`` the way ``DPOTrainer.__init__`` takes them (``beta``, ``loss_types``, ``loss_weights``, ...).
References are "precomputed" (``precompute_ref_log_probs=True``), so the summed reference log-probs enter through
``inputs["ref_chosen_logps"]`` / ``inputs["ref_rejected_logps"]``. The policy is a stand-in module whose forward
returns TRL's own ``FusedCausalLMOutput`` with ``log_probs`` built from two leaf tensors, the per-token log-probs of
the chosen and rejected answers in the layout the tests use (``[B, Tc]`` and ``[B, Tr]``), scattered into TRL's
``[chosen rows; rejected rows]`` x ``(prompt + completion - 1)`` layout and zeroed where the label is ``-100``, as
TRL's fused LM head does. ``DPOTrainer._compute_loss`` then runs unmodified; its loss is back-propagated to the leaf
tensors, whose gradients are recorded along with the metrics TRL logs (reward and log-prob means).

Token log-probs outside the answer masks are filled with junk (never seen by TRL) so that the tests also check that
the implementation masks them out. Everything is float64.

To rerun (the output is deterministic; it overwrites ``dpo_vectors.json`` next to this file)::

    python3.11 -m venv /tmp/trlenv
    /tmp/trlenv/bin/pip install torch==2.13.0 trl==1.16.0
    /tmp/trlenv/bin/python tests/dpo/data/make_dpo_vectors.py

(in this project's workspace the venv already exists as ``/work/trlenv``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import trl
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import FusedCausalLMOutput

OUT = Path(__file__).with_name("dpo_vectors.json")
DTYPE = torch.float64


def make_inputs(name: str, seed: int, chosen_lens: list[int], rejected_lens: list[int], prompt_lens: list[int],
                tc: int, tr: int, ref_noise: float) -> dict:
    """Random answers: per-token log-probs in [-6, -0.05], junk where masked, references near the policy."""
    g = torch.Generator().manual_seed(seed)
    b = len(chosen_lens)

    def tokens(lens: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.arange(width)[None, :] < torch.tensor(lens)[:, None]
        good = -(0.05 + 5.95 * torch.rand(b, width, generator=g, dtype=DTYPE))
        junk = 100.0 * (torch.rand(b, width, generator=g, dtype=DTYPE) - 0.5)
        return torch.where(mask, good, junk), mask

    chosen, chosen_mask = tokens(chosen_lens, tc)
    rejected, rejected_mask = tokens(rejected_lens, tr)
    ref_chosen = torch.where(chosen_mask, chosen, 0).sum(1) + ref_noise * torch.randn(b, generator=g, dtype=DTYPE)
    ref_rejected = (torch.where(rejected_mask, rejected, 0).sum(1)
                    + ref_noise * torch.randn(b, generator=g, dtype=DTYPE))
    return {
        "name": name, "seed": seed, "prompt_lens": prompt_lens,
        "chosen_token_logps": chosen.tolist(), "chosen_mask": chosen_mask.tolist(),
        "rejected_token_logps": rejected.tolist(), "rejected_mask": rejected_mask.tolist(),
        "ref_chosen_logps": ref_chosen.tolist(), "ref_rejected_logps": ref_rejected.tolist(),
    }


class StandInPolicy(torch.nn.Module):
    """Plays the fused-LM-head model: returns the prepared per-token log-probs for the batch it is given."""

    def __init__(self, log_probs: torch.Tensor, expected_label_mask: torch.Tensor):
        super().__init__()
        self.log_probs = log_probs
        self.expected_label_mask = expected_label_mask
        self.calls = 0

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):
        assert fused_lm_head and not use_cache
        label_mask = labels[:, 1:] != -100  # the fused head scores next-token labels
        assert torch.equal(label_mask, self.expected_label_mask), "completion_mask / labels layout mismatch"
        self.calls += 1
        zeros = torch.zeros_like(self.log_probs)
        return FusedCausalLMOutput(
            loss=None, log_probs=self.log_probs, entropy=zeros, log_sum_sq_probs=zeros, mean_logits=zeros,
            is_top1=torch.zeros_like(label_mask), label_mask=label_mask)


class StandInAccelerator:
    """Single process: gathering is the identity."""

    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def run_trl(inp: dict, settings: dict, zero_reference: bool) -> dict:
    """One call of ``DPOTrainer._compute_loss`` on ``inp``; the loss, d loss / d token log-probs, TRL's metrics."""
    chosen = torch.tensor(inp["chosen_token_logps"], dtype=DTYPE, requires_grad=True)
    rejected = torch.tensor(inp["rejected_token_logps"], dtype=DTYPE, requires_grad=True)
    chosen_mask = torch.tensor(inp["chosen_mask"])
    rejected_mask = torch.tensor(inp["rejected_mask"])
    b = chosen.shape[0]
    prompt_lens = inp["prompt_lens"]
    lens = chosen_mask.sum(1).tolist() + rejected_mask.sum(1).tolist()
    prompts = prompt_lens + prompt_lens  # chosen and rejected of a pair share the prompt
    seq_len = max(p + n for p, n in zip(prompts, lens)) + 1  # right padding, at least one pad column

    # TRL's batch: rows [chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}], each prompt + answer + padding.
    input_ids = torch.zeros(2 * b, seq_len, dtype=torch.long)
    attention_mask = torch.zeros(2 * b, seq_len, dtype=torch.long)
    completion_mask = torch.zeros(2 * b, seq_len, dtype=torch.long)
    rows, cols, sources = [], [], []
    for row in range(2 * b):
        p, n = prompts[row], lens[row]
        input_ids[row, : p + n] = torch.arange(1, p + n + 1)
        attention_mask[row, : p + n] = 1
        completion_mask[row, p: p + n] = 1
        # log_probs[:, j] scores input token j + 1, so answer token t sits at column p + t - 1
        token_mask = (chosen_mask if row < b else rejected_mask)[row % b]
        for t in torch.nonzero(token_mask).flatten().tolist():
            rows.append(row)
            cols.append(p + t - 1)
            sources.append((row < b, row % b, t))
    assert len(rows) == sum(lens)

    picked = torch.stack([(chosen if is_chosen else rejected)[i, t] for is_chosen, i, t in sources])
    flat = torch.zeros(2 * b, seq_len - 1, dtype=DTYPE).index_put((torch.tensor(rows), torch.tensor(cols)), picked)
    shift_mask = completion_mask[:, 1:].bool()
    log_probs = flat.masked_fill(~shift_mask, 0)  # what the fused LM head returns for label -100

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = DPOConfig(output_dir="/tmp/unused", report_to=[], use_cpu=True, bf16=False,
                         precompute_ref_log_probs=True, **settings)
    assert args.f_divergence_type == "reverse_kl" and args.ld_alpha is None and not args.use_weighting

    trainer = object.__new__(DPOTrainer)
    policy = StandInPolicy(log_probs, shift_mask)
    policy.train()
    # the attributes DPOTrainer.__init__ derives from the config and _compute_loss reads
    trainer.__dict__.update(
        args=args, model=policy, accelerator=StandInAccelerator(), aux_loss_enabled=False,
        beta=args.beta, precompute_ref_logps=args.precompute_ref_log_probs, loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0] * len(args.loss_type), ld_alpha=args.ld_alpha,
        f_divergence_type=args.f_divergence_type, f_alpha_divergence_coef=args.f_alpha_divergence_coef,
        label_smoothing=args.label_smoothing, use_weighting=args.use_weighting,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    if zero_reference:
        ref_chosen, ref_rejected = torch.zeros(b, dtype=DTYPE), torch.zeros(b, dtype=DTYPE)
    else:
        ref_chosen = torch.tensor(inp["ref_chosen_logps"], dtype=DTYPE)
        ref_rejected = torch.tensor(inp["ref_rejected_logps"], dtype=DTYPE)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}

    loss = DPOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False)
    assert policy.calls == 1 and loss.dtype == DTYPE
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
               if k.startswith(("rewards/", "logps/"))}
    assert all(math.isfinite(v) for v in metrics.values())
    return {"loss": loss.item(), "chosen_grad": chosen.grad.tolist(), "rejected_grad": rejected.grad.tolist(),
            "metrics": metrics}


INPUT_SETS = [
    # a single pair whose chosen answer is one token long
    make_inputs("b1", seed=11, chosen_lens=[1], rejected_lens=[3], prompt_lens=[2], tc=1, tr=4, ref_noise=1.5),
    # four pairs, lengths 1..6, Tc != Tr
    make_inputs("b4", seed=12, chosen_lens=[6, 1, 3, 5], rejected_lens=[2, 4, 1, 4], prompt_lens=[1, 3, 2, 5],
                tc=6, tr=5, ref_noise=2.0),
    # three pairs, longer answers, references far from the policy
    make_inputs("b3", seed=13, chosen_lens=[7, 4, 2], rejected_lens=[3, 8, 5], prompt_lens=[4, 1, 2],
                tc=8, tr=9, ref_noise=6.0),
]

LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


def cases() -> list[dict]:
    out = []

    def add(case_id: str, inputs: str, settings: dict, zero_reference: bool = False) -> None:
        out.append({"id": case_id, "inputs": inputs, "settings": settings, "zero_reference": zero_reference})

    for loss_type in LOSS_TYPES:
        # exo_pair is undefined at label_smoothing 0 (TRL rejects it); 1e-3 is the EXO paper's value
        base = {"loss_type": [loss_type]} | ({"label_smoothing": 1e-3} if loss_type == "exo_pair" else {})
        add(f"{loss_type}-b1", "b1", base | {"beta": 0.1})
        add(f"{loss_type}-b4", "b4", base | {"beta": 0.1})
        add(f"{loss_type}-b3-beta0.7", "b3", base | {"beta": 0.7})
    # hinge both sides of its kink, and discopop with another tau
    add("hinge-b4-beta2", "b4", {"loss_type": ["hinge"], "beta": 2.0})
    add("discopop-b3-tau0.5", "b3", {"loss_type": ["discopop"], "beta": 0.3, "discopop_tau": 0.5})
    # label smoothing
    for data in ("b4", "b3"):
        add(f"robust-ls0.2-{data}", data, {"loss_type": ["robust"], "beta": 0.2, "label_smoothing": 0.2})
        add(f"exo_pair-ls0.3-{data}", data, {"loss_type": ["exo_pair"], "beta": 0.2, "label_smoothing": 0.3})
        add(f"aot-ls0.1-{data}", data, {"loss_type": ["aot"], "beta": 0.2, "label_smoothing": 0.1})
        add(f"aot_unpaired-ls0.25-{data}", data,
            {"loss_type": ["aot_unpaired"], "beta": 0.2, "label_smoothing": 0.25})
    # weighted combinations; sigmoid + 0.5 sft is older TRL's rpo_alpha=0.5
    for data in ("b1", "b4", "b3"):
        add(f"sigmoid+sft-w0.5-{data}", data, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]})
        add(f"sigmoid+bco_pair+sft-{data}", data,
            {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]})
    add("ipo+sigmoid_norm+hinge-b4", "b4", {"loss_type": ["ipo", "sigmoid_norm", "hinge"], "beta": 0.3})
    add("robust+aot_unpaired-ls0.1-b3", "b3",
        {"loss_type": ["robust", "aot_unpaired"], "loss_weights": [0.6, 1.5], "label_smoothing": 0.1})
    # reference-free: every reference log-prob fed to TRL is 0
    for loss_type in ("sigmoid", "ipo", "aot", "apo_zero"):
        for data in ("b4", "b3"):
            add(f"{loss_type}-zero_ref-{data}", data, {"loss_type": [loss_type], "beta": 0.1}, zero_reference=True)
    add("sigmoid+sft-w0.5-zero_ref-b4", "b4",
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, zero_reference=True)
    return out


def main() -> None:
    torch.manual_seed(0)
    by_name = {inp["name"]: inp for inp in INPUT_SETS}
    all_cases = cases()
    assert {c["settings"]["loss_type"][0] for c in all_cases} >= set(LOSS_TYPES)
    for case in all_cases:
        case["expected"] = run_trl(by_name[case["inputs"]], case["settings"], case["zero_reference"])
    OUT.write_text(json.dumps({
        "source": f"trl {trl.__version__} DPOTrainer._compute_loss, torch {torch.__version__}, float64",
        "inputs": by_name, "cases": all_cases}, indent=1) + "\n")
    print(f"wrote {len(all_cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
