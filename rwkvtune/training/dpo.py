"""``DPOTrainer``: direct preference optimisation on (prompt, chosen, rejected) pairs, TRL's losses on an RNN.

Each pair's prompt is read once and both answers continue from its state
(``model.continuations.score_continuations``): a pair costs one prompt forward, not the two a transformer
trainer runs, and the answers' gradients meet in the one prompt pass. The reference is the starting policy:
the base with the adapter switched off (LoRA), the starting state on the shared base (state tuning), or a
frozen copy (full fine-tuning); or a model passed as ``ref_model``; or none (``reference_free``). A model
passed in with an already trained adapter is compared with its base without that adapter (as TRL does).

The loss of a micro-batch is TRL's batch loss (a mean over its pairs); an optimizer step averages its
micro-batches and DDP averages over processes, as TRL's gradient accumulation does.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from rwkvtune.config.dpo import DPOConfig
from rwkvtune.data.preferences import PreferencePair, prepare_preferences
from rwkvtune.dpo import DPOLossSettings, DPOTerms, dpo_loss
from rwkvtune.engine.checkpoint import TrainProgress
from rwkvtune.engine.distributed import gather_rows
from rwkvtune.engine.loop import Workload, plan_windows
from rwkvtune.engine.steps import Backprop, with_gradient_path
from rwkvtune.hub import AutoModel
from rwkvtune.model import RWKV7, base_model_of
from rwkvtune.model.continuations import score_continuations
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.training.base import BaseTrainer, frozen_for_reference


class DPOTrainer(BaseTrainer):
    """DPO on RWKV-7.

    Args:
        model: a hub directory path, an ``RWKV7``, or one wrapped by ``rwkvtune.peft.get_peft_model``.
        ref_model: the reference, a hub directory path or an ``RWKV7`` (default: the starting policy).
        args: ``DPOConfig`` (defaults if ``None``).
        train_dataset: rows with ``prompt``, ``chosen``, ``rejected`` (strings, or message lists), or
            ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids`` (``rwkvtune.data.preferences``).
        eval_dataset: optional, same forms; its mean DPO loss is logged as ``eval_loss``.
        processing_class: the tokenizer (default: the hub directory's, else the World tokenizer).
        peft_config: a ``rwkvtune.peft.LoraConfig`` (or ``StateTuningConfig``) to train an adapter.
    """

    config_class = DPOConfig
    args_type = DPOConfig

    def __init__(self, model: str | os.PathLike | nn.Module, ref_model: str | os.PathLike | nn.Module | None = None,
                 args: DPOConfig | None = None, train_dataset: Any = None, eval_dataset: Any = None,
                 processing_class: WorldTokenizer | None = None, peft_config: Any = None):
        super().__init__(model, args, processing_class, peft_config)
        problems = []
        if train_dataset is None:
            problems.append("DPOTrainer needs a train_dataset of preference pairs")
        if ref_model is not None and self.args.reference_free:
            problems.append("pass ref_model or set reference_free=True, not both")
        if ref_model is None and not self.args.reference_free and \
                getattr(getattr(self.model, "rwkv_info", None), "initial_adapter", None) is not None:
            problems.append("the reference is the starting policy, but a PiSSA/OLoRA/CorDA adapter rewrote the base "
                            "weights: use a plain LoRA init, pass ref_model, or set reference_free=True")
        if problems:
            raise ValueError("invalid DPOTrainer arguments:\n  - " + "\n  - ".join(problems))
        self.ref_model = ref_model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset

    def _prepare_data(self) -> None:
        config = self.args
        base = base_model_of(self.model)
        prepare = dict(tokenizer=self.tokenizer, vocab_size=base.config.vocab_size,
                       max_prompt_length=config.max_prompt_length, max_completion_length=config.max_completion_length)
        self._pairs = prepare_preferences(self.train_dataset, **prepare)
        self._eval_pairs = prepare_preferences(self.eval_dataset, **prepare) if self.eval_dataset is not None else None
        self._reference = self._reference_model(base)

    def _reference_model(self, base: nn.Module) -> nn.Module | None:
        """The reference's own module, or ``None`` when there is none to hold (reference-free, or LoRA: the
        policy with its adapter switched off)."""
        config = self.args
        if config.reference_free:
            return None
        if self.ref_model is None:
            return self._starting_policy()
        if isinstance(self.ref_model, (str, os.PathLike)):
            reference = AutoModel.from_pretrained(self.ref_model, dtype="fp32")
        elif isinstance(self.ref_model, nn.Module) and isinstance(base_model_of(self.ref_model), RWKV7):
            reference = copy.deepcopy(self.ref_model)  # held in the compute dtype; the caller's stays as given
        else:
            raise TypeError(f"ref_model must be a hub directory path or an RWKV7 model, got "
                            f"{type(self.ref_model).__name__}")
        if base_model_of(reference).config.vocab_size != base.config.vocab_size:
            raise ValueError(f"ref_model has a vocabulary of {base_model_of(reference).config.vocab_size} tokens, "
                             f"the policy {base.config.vocab_size}: they must share the tokenizer")
        return frozen_for_reference(reference, config.precision)

    def _workload(self, fabric, model, progress: TrainProgress) -> Workload:
        if self._reference is not None:
            self._reference = fabric.to_device(self._reference)
        model.mark_forward_method("score")  # scoring runs through Fabric's wrapper (autocast, DDP)
        self._preferences = _Preferences(self.args, self._pairs, fabric, model, reference=self._reference,
                                         adapter_policy=self.model if hasattr(self.model, "disable_adapter") else None)
        if self.args.precompute_ref_log_probs:
            self._preferences.precompute(self._eval_pairs)
            self._reference = None  # a frozen copy is no longer needed: freed
        return self._preferences.workload()

    def _evaluation(self, fabric, model):
        if self._eval_pairs is None:
            return None, 0
        return (lambda: self._preferences.evaluate(self._eval_pairs)), self.args.eval_steps


class _Preferences:
    """The DPO workload: micro-batches of pairs, their losses, the reference's log-probs and TRL's metrics.

    ``model`` is Fabric's wrapper of the policy; ``reference`` the reference's own module, or ``None``: then
    ``adapter_policy`` (the LoRA-wrapped policy itself, not Fabric's wrapper) with its adapter switched off is
    the reference, unless the run is reference-free. Reference passes need no gradient, so they bypass
    Fabric's wrapper: under DDP a process may run more or fewer of them than the others (precomputing its
    share) without meeting the wrapper's collectives.
    """

    def __init__(self, config: DPOConfig, pairs: list[PreferencePair], fabric, model, *,
                 reference: nn.Module | None, adapter_policy: nn.Module | None):
        self.config, self.pairs, self.fabric, self.model = config, pairs, fabric, model
        self.reference, self.adapter_policy = reference, adapter_policy
        # every loss knob is the config field of the same name
        self.settings = DPOLossSettings(**{f.name: getattr(config, f.name) for f in dataclasses.fields(DPOLossSettings)})
        self.precomputed: dict[str, torch.Tensor] = {}
        self._sums: dict[str, float] = {}
        self._counts: dict[str, float] = {}

    def workload(self) -> Workload:
        config, n = self.config, len(self.pairs)

        def plan(epoch: int, rank: int, world_size: int) -> list[list[list[int]]]:
            return plan_windows(n, config, epoch=epoch, rank=rank, world_size=world_size)

        return Workload(plan=plan, prepare=lambda micro: {"indices": list(micro)}, micro_step=self.micro_step,
                        normalise=self.normalise, tokens=lambda batch: batch.get("num_tokens", 0),
                        metrics=self.metrics)

    def normalise(self, fabric, window: list[dict[str, Any]]) -> tuple[float, float]:
        """Each micro-step's loss is its pairs' mean: a window averages them (DDP averages over processes)."""
        return 1.0 / len(window), float(len(window) * fabric.world_size)

    # ---- one micro-batch --------------------------------------------------------------------------------

    def micro_step(self, model, batch: dict[str, Any], backprop: Backprop) -> torch.Tensor:
        pairs = [self.pairs[i] for i in batch["indices"]]
        reference = self._reference_logps(batch["indices"], pairs, train=True)
        with backprop.scope(final=True):
            loss, terms, entropy = self._loss(model, pairs, reference, prompt_scope=lambda: backprop.scope(final=False))
            backprop(with_gradient_path(loss, model))
        self._record(terms, entropy)
        batch["num_tokens"] = sum(p.num_tokens for p in pairs)
        return loss.detach()

    def _loss(self, model, pairs: list[PreferencePair], reference: tuple[torch.Tensor, torch.Tensor] | None,
              prompt_scope: Callable[[], AbstractContextManager[None]] = nullcontext,
              ) -> tuple[torch.Tensor, DPOTerms, tuple[float, float]]:
        """The DPO loss of ``pairs`` under ``model``, its logged terms and ``(entropy sum, answer tokens)``."""
        ids, mask = _answers(pairs, self.fabric.device)
        with self.fabric.autocast():  # a marked method on one device does not go through Fabric's autocast
            logps, entropies = score_continuations(model, [p.prompt_ids for p in pairs], ids, mask, per_prompt=2,
                                                   prompt_scope=prompt_scope)
        ref_chosen, ref_rejected = reference if reference is not None else (None, None)
        loss, terms = dpo_loss(logps[0::2], mask[0::2], logps[1::2], mask[1::2], ref_chosen, ref_rejected,
                               self.settings)
        entropy = (float(entropies.detach()[mask].sum()), float(mask.sum()))
        return loss, terms, entropy

    # ---- the reference ------------------------------------------------------------------------------------

    def _reference_logps(self, indices: list[int], pairs: list[PreferencePair],
                         train: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Summed reference log-probs ``([B], [B])`` of the chosen and rejected answers (``None``: reference-free)."""
        if self.config.reference_free:
            return None
        if self.precomputed:
            both = self.precomputed["train" if train else "eval"][indices].to(self.fabric.device)
            return both[:, 0], both[:, 1]
        return self._score_reference(pairs)

    @torch.no_grad()
    def _score_reference(self, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = _answers(pairs, self.fabric.device)
        prompts = [p.prompt_ids for p in pairs]
        with self.fabric.autocast():  # the training forward's precision
            if self.reference is not None:
                logps, _ = score_continuations(self.reference, prompts, ids, mask, per_prompt=2)
            else:  # LoRA: the base is the starting policy
                with self.adapter_policy.disable_adapter():
                    logps, _ = score_continuations(self.adapter_policy, prompts, ids, mask, per_prompt=2)
        sums = logps.float().sum(dim=1)
        return sums[0::2], sums[1::2]

    def precompute(self, eval_pairs: list[PreferencePair] | None) -> None:
        """Score every training (and evaluation) pair under the reference now, each process its share, all
        gathering the rest; the reference module is dropped afterwards."""
        self.precomputed = {"train": self._score_all(self.pairs)}
        if eval_pairs is not None:
            self.precomputed["eval"] = self._score_all(eval_pairs)
        self.reference = None

    def _score_all(self, pairs: list[PreferencePair]) -> torch.Tensor:
        rank, world = self.fabric.global_rank, self.fabric.world_size
        per_process = -(-len(pairs) // world)
        mine = list(range(rank * per_process, min((rank + 1) * per_process, len(pairs))))
        local = torch.full((per_process, 2), float("nan"), device=self.fabric.device)
        for start in range(0, len(mine), self.config.micro_bsz):
            chunk = mine[start:start + self.config.micro_bsz]
            chosen, rejected = self._score_reference([pairs[i] for i in chunk])
            local[start:start + len(chunk)] = torch.stack([chosen, rejected], dim=1)
        return gather_rows(self.fabric, local)[:len(pairs)].cpu()

    # ---- evaluation and metrics ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, pairs: list[PreferencePair]) -> float:
        """The DPO loss over ``pairs``: the mean of its ``micro_bsz`` batches' losses, each weighted by its
        pairs (every process evaluates all of them)."""
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        for start in range(0, len(pairs), self.config.micro_bsz):
            indices = list(range(start, min(start + self.config.micro_bsz, len(pairs))))
            part = [pairs[i] for i in indices]
            loss, _, _ = self._loss(self.model, part, self._reference_logps(indices, part, train=False))
            total += float(loss) * len(part)
        self.model.train(was_training)
        return total / max(len(pairs), 1)

    def _record(self, terms: DPOTerms, entropy: tuple[float, float]) -> None:
        """Add a micro-batch's per-pair values (TRL's metric names) to the sums since the last log."""
        values = {"rewards/chosen": terms.chosen_rewards, "rewards/rejected": terms.rejected_rewards,
                  "rewards/accuracies": terms.accuracies, "rewards/margins": terms.margins,
                  "logps/chosen": terms.chosen_logps, "logps/rejected": terms.rejected_logps}
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value.double().sum())
            self._counts[key] = self._counts.get(key, 0.0) + value.numel()
        self._sums["entropy"] = self._sums.get("entropy", 0.0) + entropy[0]
        self._counts["entropy"] = self._counts.get("entropy", 0.0) + entropy[1]

    def metrics(self) -> dict[str, float]:
        """Means over the pairs (entropy: over the answer tokens) since the last log, on all processes."""
        names = sorted(self._sums)
        if not names:
            return {}
        sums = torch.tensor([[self._sums[k], self._counts[k]] for k in names], dtype=torch.float64)
        if self.fabric.world_size > 1:
            sums = self.fabric.all_reduce(sums.to(self.fabric.device), reduce_op="sum").cpu()
        self._sums, self._counts = {}, {}
        return {name: float(total / max(count, 1.0)) for name, (total, count) in zip(names, sums.tolist())}


def _answers(pairs: list[PreferencePair], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [2B, C], mask [2B, C])``: each pair's chosen then rejected answer, right-padded."""
    answers = [a for p in pairs for a in (p.chosen_ids, p.rejected_ids)]
    longest = max(len(a) for a in answers)
    ids = torch.zeros(len(answers), longest, dtype=torch.long)
    mask = torch.zeros(len(answers), longest, dtype=torch.bool)
    for row, answer in enumerate(answers):
        ids[row, :len(answer)] = torch.tensor(answer)
        mask[row, :len(answer)] = True
    return ids.to(device), mask.to(device)

