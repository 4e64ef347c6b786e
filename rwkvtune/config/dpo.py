"""``DPOConfig``: direct preference optimisation with TRL's loss names and meanings (TRL 1.16's losses, plus
the older ``rpo_alpha``, ``reference_free``, ``max_prompt_length`` and ``max_completion_length`` that
many recipes still set), and the training loop's fields (``LoopConfig``).

A micro-batch is ``micro_bsz`` pairs; each pair's prompt is read once and both answers continue its state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rwkvtune.config.train import STRATEGIES, LoopConfig, _booleans, _help, _integers

#: TRL 1.16's loss types.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
#: Older TRL names of the same losses.
LOSS_ALIASES = {"aot_pair": "aot_unpaired"}
#: The losses that read ``label_smoothing`` (TRL 1.16's sigmoid has no cDPO smoothing).
SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
#: The reference is a frozen copy, the adapter switched off or the starting state: not sharded.
DPO_STRATEGIES = ("auto", "ddp", "single_device")


@dataclass
class DPOConfig(LoopConfig):
    """DPO training (``DPOTrainer``)."""

    micro_bsz: int = _help("Preference pairs per device per micro-step.", 4)

    # Loss
    beta: float = _help("How far the policy may move from the reference (TRL's beta; for ipo its tau).", 0.1)
    loss_type: str | list[str] = _help(
        f"One of {', '.join(LOSS_TYPES)} (aot_pair: the older name of aot_unpaired), or a list of them, summed "
        "with loss_weights.", "sigmoid")
    loss_weights: list[float] | None = _help("One weight per loss_type entry (None = all 1).", None)
    label_smoothing: float = _help("The assumed probability that a pair's labels are flipped; read by robust, "
                                   "exo_pair, aot and aot_unpaired.", 0.0)
    discopop_tau: float = _help("discopop: temperature of the mixing between its logistic and exponential parts.",
                                0.05)
    rpo_alpha: float | None = _help("Add rpo_alpha x the chosen answers' mean token NLL (RPO; the same as adding "
                                    "'sft' to loss_type with that weight). None = off.", None)
    reference_free: bool = _help("Compare against a uniform reference (its log-probs taken as 0) instead of the "
                                 "starting policy.", False)
    precompute_ref_log_probs: bool = _help("Score every pair under the reference once before training (then the "
                                           "frozen copy of full fine-tuning is freed).", False)

    # Data
    max_prompt_length: int | None = _help("Prompt tokens kept: the last ones, as TRL (None = all).", 512)
    max_completion_length: int | None = _help("Answer tokens kept: the first ones, as TRL (None = all).", None)
    eval_steps: int = _help("Evaluate on eval_dataset every N optimizer steps (0 = at epoch ends only).", 0)

    # Optimisation: TRL's DPO defaults (its lr; HF's AdamW settings)
    lr_init: float = _help("Peak learning rate, reached after warmup.", 1e-6)
    lr_final: float = _help("Learning rate at the last step.", 1e-7)
    warmup_steps: int = _help("Optimizer steps of linear warmup from 0 to lr_init.", 0)
    epoch_count: int = _help("Passes over the pairs.", 1)
    beta2: float = _help("AdamW beta2.", 0.999)
    adam_eps: float = _help("AdamW epsilon.", 1e-8)

    output_dir: str = _help("Where checkpoints, logs and the final model go.", "output_dpo")

    @property
    def loss_types(self) -> tuple[str, ...]:
        """``loss_type`` as a tuple of TRL 1.16 names (aliases resolved)."""
        names = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        return tuple(LOSS_ALIASES.get(name, name) for name in names)

    def __post_init__(self) -> None:
        self.validate()

    def _problems(self) -> list[str]:
        problems = super()._problems()
        for name in ("max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"{name} must be None or an integer >= 1, got {value!r}")
        problems += _booleans(self, ("reference_free", "precompute_ref_log_probs"))
        problems += _integers(self, ("eval_steps",), minimum=0)
        names = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
            problems.append(f"loss_type must be a loss name or a non-empty list of them, got {self.loss_type!r}")
            names = []
        unknown = [n for n in names if n not in LOSS_TYPES and n not in LOSS_ALIASES]
        if unknown:
            problems.append(f"unknown loss_type {', '.join(map(repr, unknown))}; choose from {', '.join(LOSS_TYPES)} "
                            f"(or {', '.join(LOSS_ALIASES)})")
        if self.loss_weights is not None:
            if not isinstance(self.loss_weights, (list, tuple)) or not all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.loss_weights):
                problems.append(f"loss_weights must be None or a list of numbers, got {self.loss_weights!r}")
            elif len(self.loss_weights) != len(names):
                problems.append(f"loss_weights has {len(self.loss_weights)} weights for {len(names)} loss types "
                                f"({', '.join(names)}): give one weight per loss_type entry")
        if not 0 < self.beta < math.inf:
            problems.append(f"beta must be a finite number > 0, got {self.beta!r}")
        elif self.loss_weights is not None and all(isinstance(w, (int, float)) for w in self.loss_weights) and \
                not all(math.isfinite(w) for w in self.loss_weights):
            problems.append(f"loss_weights must be finite, got {self.loss_weights!r}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing must be in [0, 0.5) (robust divides by 1 - 2 x label_smoothing), got "
                            f"{self.label_smoothing!r}")
        if self.label_smoothing > 0 and not set(self.loss_types) & set(SMOOTHED_LOSSES):
            problems.append(f"label_smoothing is read only by {', '.join(SMOOTHED_LOSSES)} (TRL 1.16's sigmoid "
                            "has no label smoothing): add one of them to loss_type, or leave label_smoothing at 0")
        if "exo_pair" in self.loss_types and self.label_smoothing == 0:
            problems.append("loss_type 'exo_pair' needs label_smoothing > 0 (it takes the log of it); TRL suggests "
                            "1e-3")
        if not 0 < self.discopop_tau < math.inf:
            problems.append(f"discopop_tau must be a finite number > 0, got {self.discopop_tau!r}")
        if self.rpo_alpha is not None and not 0 <= self.rpo_alpha < math.inf:
            problems.append(f"rpo_alpha must be None or a finite number >= 0, got {self.rpo_alpha!r}")
        if self.reference_free and self.precompute_ref_log_probs:
            problems.append("reference_free has no reference to precompute: set precompute_ref_log_probs=False")
        if self.strategy in STRATEGIES and self.strategy not in DPO_STRATEGIES:
            problems.append(f"DPO runs on one device or under DDP (strategy 'auto' or 'ddp'), not {self.strategy!r}: "
                            "its reference (a frozen copy, or the policy with its adapter off) is not sharded")
        return problems
