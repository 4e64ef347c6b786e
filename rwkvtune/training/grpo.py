"""``GRPOTrainer``: group relative policy optimisation with TRL 1.16's advantages and losses, on an RNN.

One rollout takes ``steps_per_generation x micro_bsz`` prompts: each prompt is read once by the generation
engine and its state copied to its ``num_generations`` completions; the rewards, advantages and (when
needed) old and reference log-probs are computed at once. The rollout then serves ``steps_per_generation x
num_iterations`` micro-steps, each the loss of ``micro_bsz`` prompt groups (their prompts again read once
in the training forward). ``accumulate_grad_batches`` micro-steps make an optimizer step. All of it runs
in the shared training loop (``engine.loop.fit``), with its checkpoints, exact resume and metrics.

This module wires the parts together and runs the loss; the parts live in ``rwkvtune.grpo``: sampling and
rewarding a rollout (``sampling``), its old and reference log-probs (``rollout_logprobs``), its JSONL
records (``records``) and the copy saved with each checkpoint (``rollout_buffer``).

Where this differs from TRL: micro-batches hold whole prompt groups (TRL shuffles completions across
them), so that a prompt is read once per forward. What is local to a micro-batch can then differ: ``bnpo``'s
token mean, the ``top_entropy_quantile`` threshold, and with ``steps_per_generation > accumulate_grad_batches``
which completions an optimizer step sees. Rewards come from Python callables only (no reward models). With
an adapter already trained when passed in, the reference is the base with it switched off (TRL copies the
initial adapter).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rwkvtune.config.grpo import GRPOConfig
from rwkvtune.data.prompts import PromptRow, prepare_prompts
from rwkvtune.engine.checkpoint import TrainProgress
from rwkvtune.engine.data_order import epoch_micro_batches
from rwkvtune.engine.distributed import gather_rows
from rwkvtune.engine.loop import Workload
from rwkvtune.engine.steps import Backprop, with_gradient_path
from rwkvtune.grpo import GRPOLossSettings, grpo_loss
from rwkvtune.grpo.records import append_records, rollout_records
from rwkvtune.grpo.rewards import RewardFunc, RewardState, reward_names
from rwkvtune.grpo.rollout import Rollout
from rwkvtune.grpo.rollout_buffer import RolloutBuffer, load_saved_rollout
from rwkvtune.grpo.rollout_logprobs import RolloutScorer
from rwkvtune.grpo.sampling import PostprocessFn, RolloutSampler
from rwkvtune.model import base_model_of
from rwkvtune.model.continuations import score_continuations
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.training.base import BaseTrainer



class GRPOTrainer(BaseTrainer):
    """GRPO on RWKV-7.

    Args:
        model: a hub directory path, an ``RWKV7``, or one wrapped by ``rwkvtune.peft.get_peft_model``.
        reward_funcs: a callable or a list of them, called as TRL calls them (``rwkvtune.grpo.rewards``).
        args: ``GRPOConfig`` (defaults if ``None``).
        train_dataset: rows with ``prompt`` (text or messages), ``messages`` or ``input_ids``; every other
            column reaches the reward functions as a keyword argument.
        peft_config: a ``rwkvtune.peft.LoraConfig`` (or ``StateTuningConfig``) to train an adapter.
        processing_class: the tokenizer (default: the hub directory's, else the World tokenizer).
        completion_postprocess_fn: called after sampling and before the rewards with ``prompts``,
            ``completions``, ``completion_ids`` ``[B*G, C]``, ``masks`` ``[B*G, C]``, ``tokenizer`` and the
            dataset columns; returns ``{"completions", "completion_ids", "masks"}`` with the same shapes:
            what the rewards and the loss see.
    """

    config_class = GRPOConfig
    args_type = GRPOConfig

    def __init__(self, model: str | os.PathLike | nn.Module, reward_funcs: RewardFunc | Sequence[RewardFunc],
                 args: GRPOConfig | None = None, train_dataset: Any = None, peft_config: Any = None,
                 processing_class: WorldTokenizer | None = None,
                 completion_postprocess_fn: PostprocessFn | None = None):
        super().__init__(model, args, processing_class, peft_config)
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        problems = [f"reward_funcs[{i}] is a {type(f).__name__}, not a callable" for i, f in enumerate(funcs)
                    if not callable(f)]
        if not funcs:
            problems.append("reward_funcs is empty: give at least one reward function")
        if self.args.reward_weights is not None and len(self.args.reward_weights) != len(funcs):
            problems.append(f"reward_weights has {len(self.args.reward_weights)} weights for {len(funcs)} reward "
                            "functions")
        if train_dataset is None:
            problems.append("GRPOTrainer needs a train_dataset of prompts")
        if completion_postprocess_fn is not None and not callable(completion_postprocess_fn):
            problems.append("completion_postprocess_fn must be callable")
        if self.args.beta != 0 and getattr(getattr(self.model, "rwkv_info", None), "initial_adapter", None) is not None:
            problems.append("beta > 0 needs the starting policy as the reference, but a PiSSA/OLoRA/CorDA adapter "
                            "rewrote the base weights: use a plain LoRA init, or beta=0")
        if problems:
            raise ValueError("invalid GRPOTrainer arguments:\n  - " + "\n  - ".join(problems))
        self.reward_funcs = funcs
        self.reward_names = reward_names(funcs)
        self.train_dataset = train_dataset
        self.completion_postprocess_fn = completion_postprocess_fn
        self._resumed_buffer: dict[str, Any] | None = None
        self._buffer: RolloutBuffer | None = None

    def _prepare_data(self) -> None:
        base = base_model_of(self.model)
        self._prompts = prepare_prompts(self.train_dataset, tokenizer=self.tokenizer,
                                        max_prompt_length=self.args.max_prompt_length,
                                        vocab_size=base.config.vocab_size)
        # the starting policy, for the KL (None with LoRA: the adapter is switched off)
        self._reference = self._starting_policy() if self.args.beta != 0 else None

    def _workload(self, fabric, model, progress: TrainProgress) -> Workload:
        c, g = self.args, self.args.num_generations
        if self._reference is not None:
            self._reference = fabric.to_device(self._reference)
        model.mark_forward_method("score")  # scoring runs through Fabric's wrapper (autocast, DDP)
        sampler = RolloutSampler(self.model, self.tokenizer, c, self.reward_funcs, self.reward_names,
                                 postprocess=self.completion_postprocess_fn,
                                 gather=functools.partial(gather_rows, fabric), rank=fabric.global_rank,
                                 world_size=fabric.world_size)
        # the old and reference passes run in forwards of logprob_batch_size rows, else of one micro-batch
        scorer = RolloutScorer(model, num_generations=g, temperature=c.temperature,
                               prompts_per_forward=(c.logprob_batch_size or c.micro_bsz * g) // g,
                               device=fabric.device, autocast=fabric.autocast, reference=self._reference,
                               without_adapter=getattr(self.model, "disable_adapter", None))
        self._buffer = RolloutBuffer(num_generations=g, world_size=fabric.world_size, saved=self._resumed_buffer)
        return _GRPOWorkload(c, self._prompts, self.reward_names, fabric, progress, sampler=sampler, scorer=scorer,
                             buffer=self._buffer).workload()

    def _checkpoint_files(self, directory: Path) -> None:
        if self._buffer is not None:
            self._buffer.save(directory)

    def _resume_files(self, checkpoint: Path) -> None:
        self._resumed_buffer = load_saved_rollout(checkpoint)


def plan_rollout_windows(n_prompts: int, config: GRPOConfig, *, epoch: int, rank: int,
                         world_size: int) -> list[list[dict[str, Any]]]:
    """This process's windows of micro-steps for ``epoch``: rollout ``r`` holds ``S`` micro-batches of
    prompts and gives ``S x mu`` micro-steps (its slices in order, ``mu`` times); ``GA`` micro-steps make a
    window. An item names its rollout, the rollout's micro-batches of dataset rows (``groups``), its
    ``slice`` of them and that slice's range of the rollout's prompts (``prompts``)."""
    c = config
    batches = epoch_micro_batches(n_prompts, epoch=epoch, seed=c.seed, micro_bsz=c.micro_bsz, rank=rank,
                                  world_size=world_size)
    per_epoch = len(batches) // c.steps_per_generation
    if per_epoch == 0:
        raise ValueError(f"a rollout takes steps_per_generation x micro_bsz = {c.steps_per_generation} x "
                         f"{c.micro_bsz} prompts per process, but {n_prompts} prompts give "
                         f"{len(batches)} micro-batch(es) on {world_size} process(es): add prompts or lower them")
    items = []
    for r in range(per_epoch):
        groups = batches[r * c.steps_per_generation:(r + 1) * c.steps_per_generation]
        starts = [sum(len(group) for group in groups[:s]) for s in range(len(groups) + 1)]
        for _ in range(c.num_iterations):
            items += [{"rollout": epoch * per_epoch + r, "slice": s, "groups": groups,
                       "prompts": (starts[s], starts[s + 1])} for s in range(c.steps_per_generation)]
    windows = [items[i:i + c.accumulate_grad_batches] for i in range(0, len(items), c.accumulate_grad_batches)]
    return windows[:c.epoch_steps] if c.epoch_steps else windows


def loss_settings(config: GRPOConfig) -> GRPOLossSettings:
    """The loss's knobs: each is the config field of the same name."""
    return GRPOLossSettings(**{f.name: getattr(config, f.name) for f in dataclasses.fields(GRPOLossSettings)})


class _GRPOWorkload:
    """The loop's view of GRPO: micro-steps planned over rollouts, each the loss of one slice of the rollout
    in use (sampled when its first micro-step comes, or the one the checkpoint resumed from saved)."""

    def __init__(self, config: GRPOConfig, prompts: list[PromptRow], reward_names: list[str], fabric,
                 progress: TrainProgress, *, sampler: RolloutSampler, scorer: RolloutScorer, buffer: RolloutBuffer):
        self.config, self.prompts, self.reward_names = config, prompts, reward_names
        self.fabric, self.progress = fabric, progress
        self.sampler, self.scorer, self.buffer = sampler, scorer, buffer
        self.settings = loss_settings(config)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._windows = 0
        # completions trained on in the current window, and how many of them had a reward
        self._window_rows = self._window_rewarded = 0

    def workload(self) -> Workload:
        return Workload(plan=self.plan, prepare=dict, micro_step=self.micro_step, normalise=self.normalise,
                        tokens=lambda batch: batch.get("num_tokens", 0), metrics=self.metrics,
                        before_update=self.before_update)

    def plan(self, epoch: int, rank: int, world_size: int) -> list[list[dict[str, Any]]]:
        return plan_rollout_windows(len(self.prompts), self.config, epoch=epoch, rank=rank, world_size=world_size)

    def normalise(self, fabric, window: list[dict[str, Any]]) -> tuple[float, float]:
        """TRL's losses come normalised per micro-step (and DDP's average over processes is part of their
        definition): backward as they are; the logged loss is the window's sum, averaged over processes."""
        self._windows += 1
        return 1.0, float(fabric.world_size)

    def before_update(self, step: int) -> None:
        """Stop before optimizer step ``step`` when none of the completions it trained on, on any process, had
        a reward from any function: their advantages are all 0 and the update would carry no reward signal.
        Decided from counts summed over processes, so that every process raises alike."""
        counts = torch.tensor([float(self._window_rewarded), float(self._window_rows)], device=self.fabric.device)
        self._window_rows = self._window_rewarded = 0
        rewarded, rows = (int(v) for v in self.fabric.all_reduce(counts, reduce_op="sum").tolist())
        if rewarded == 0 and rows > 0:
            names = ", ".join(repr(name) for name in self.reward_names)
            raise ValueError(
                f"no completion of optimizer step {step} had a reward: the reward function(s) {names} returned "
                f"None or NaN for all {rows} completions it trained on"
                f"{' (on every process)' if self.fabric.world_size > 1 else ''}, so every advantage is 0 and the "
                "step would learn nothing from the rewards. Training stopped before the update. At least one "
                "reward function must return a number for every completion (None only where another one scores it)")

    def micro_step(self, model, batch: dict[str, Any], backprop: Backprop) -> torch.Tensor:
        c, g = self.config, self.config.num_generations
        rollout = self._rollout_for(batch)
        first, end = batch["prompts"]
        prompts = rollout.prompts[first:end]
        rows = slice(first * g, end * g)
        self._window_rows += len(prompts) * g
        self._window_rewarded += int((~torch.isnan(rollout.rewards_per_func[rows])).any(dim=1).sum())
        device = self.fabric.device
        ids, mask = rollout.completion_ids[rows].to(device), rollout.mask[rows].to(device)
        advantages = rollout.advantages[rows].to(device)
        old = None if rollout.old_logps is None else rollout.old_logps[rows].to(device)
        ref = None if rollout.ref_logps is None else rollout.ref_logps[rows].to(device)
        gather = functools.partial(_gather_ragged, self.fabric)
        per_forward = (c.logprob_batch_size or len(prompts) * g) // g  # prompts per forward
        losses, logps, entropies = [], [], []
        forward_time = backward_time = 0.0
        for start in range(0, len(prompts), per_forward):
            part = slice(start * g, min(start + per_forward, len(prompts)) * g)
            with backprop.scope(final=start + per_forward >= len(prompts)):
                started = time.perf_counter()
                # Fabric applies mixed precision only to calls that go through its wrapper's forward, and on one
                # device a marked method does not: autocast here, as for the old and reference passes.
                with self.fabric.autocast():
                    lp, ent = score_continuations(model, [p.ids for p in prompts[start:start + per_forward]],
                                                  ids[part], mask[part], per_prompt=g, temperature=c.temperature,
                                                  prompt_scope=lambda: backprop.scope(final=False))
                loss, _ = grpo_loss(
                    lp, mask[part], advantages[part], self.settings,
                    old_logps=None if old is None else old[part], ref_logps=None if ref is None else ref[part],
                    entropies=ent, num_items_in_batch=rollout.num_items, num_processes=self.fabric.world_size,
                    grad_accum=c.accumulate_grad_batches, steps_per_generation=c.steps_per_generation,
                    batch_rows=len(prompts) * g, batch_tokens=float(mask.sum()), gather=gather)
                scored = time.perf_counter()
                backprop(with_gradient_path(loss, model))
                forward_time += scored - started
                backward_time += time.perf_counter() - scored
            losses.append(loss.detach())
            logps.append(lp.detach())
            entropies.append(ent.detach())
        with torch.no_grad():  # the metrics of the whole micro-batch
            _, metrics = grpo_loss(torch.cat(logps), mask, advantages, self.settings, old_logps=old, ref_logps=ref,
                                   entropies=torch.cat(entropies), num_items_in_batch=rollout.num_items,
                                   num_processes=self.fabric.world_size, gather=gather)
        self._add({**metrics, "time/train": forward_time + backward_time, "time/logprob": forward_time,
                   "time/backward": backward_time})
        batch["num_tokens"] = int(mask.sum()) + sum(len(p.ids) for p in prompts)
        return torch.stack(losses).sum()

    def metrics(self) -> dict[str, float]:
        """Means since the last log (times: seconds per optimizer step), averaged over processes."""
        names = sorted(self._sums)
        values = [self._sums[k] / self._windows if k.startswith("time/") else self._sums[k] / self._counts[k]
                  for k in names]
        if self.fabric.world_size > 1 and names:
            values = (self.fabric.all_reduce(torch.tensor(values, device=self.fabric.device), reduce_op="mean")
                      .tolist())
        self._sums, self._counts, self._windows = {}, {}, 0
        rollout = self.buffer.rollout
        if self.config.log_completions and rollout is not None and self.fabric.is_global_zero:
            for text, reward in list(zip(rollout.completions, rollout.rewards.tolist()))[
                    :self.config.num_completions_to_print]:
                print(f"[reward {reward:.3f}] {text!r}")
        return dict(zip(names, values))

    # ---- rollouts -----------------------------------------------------------------------------------

    def _rollout_for(self, item: dict[str, Any]) -> Rollout:
        """The rollout ``item`` trains on: the one in use, the resumed checkpoint's, or a new one."""
        index = item["rollout"]
        if not self.buffer.holds(index):
            indices = [i for group in item["groups"] for i in group]
            prompts = [self.prompts[i] for i in indices]
            saved = self.buffer.take_saved(index, prompts, indices)
            self.buffer.rollout = saved if saved is not None else self._new_rollout(index, prompts, indices)
        return self.buffer.rollout

    def _new_rollout(self, index: int, prompts: list[PromptRow], indices: list[int]) -> Rollout:
        """Sample and reward a rollout, add the old and reference log-probs the loss needs, and record it."""
        c, progress = self.config, self.progress
        rollout, metrics = self.sampler.sample(index, prompts, indices,
                                               RewardState(progress.step, progress.epoch, progress.total_steps))
        if c.needs_old_logprobs:
            rollout.old_logps = self.scorer.old_logps(rollout)
        if c.beta != 0:
            rollout.ref_logps = self.scorer.reference_logps(rollout)
        self._add(metrics)
        if c.save_rollout_steps and (progress.step + 1) % c.save_rollout_steps == 0:
            step = progress.step + 1
            records = _gather_objects(self.fabric, rollout_records(rollout, step=step, reward_names=self.reward_names))
            if self.fabric.is_global_zero:  # every process's records, rank-major
                append_records(Path(c.save_rollout_path) if c.save_rollout_path else Path(c.output_dir) / "rollouts",
                               step, records)
        return rollout

    def _add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, float) and math.isnan(value):
                continue
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1


# ---- collectives (every process calls them at the same points) -------------------------------------------

def _gather_ragged(fabric, local: torch.Tensor) -> torch.Tensor:
    """``[n]`` values of different ``n`` on each process -> all of them (on every process)."""
    if fabric.world_size == 1:
        return local
    longest = int(fabric.all_reduce(torch.tensor(float(local.numel()), device=fabric.device), reduce_op="max"))
    padded = torch.full((longest,), math.nan, dtype=local.dtype, device=fabric.device)
    padded[:local.numel()] = local
    gathered = fabric.all_gather(padded).reshape(-1)
    return gathered[~torch.isnan(gathered)]


def _gather_objects(fabric, local: list[Any]) -> list[Any]:
    """Each process's list -> their concatenation in rank order (on every process)."""
    if fabric.world_size == 1:
        return local
    everyone: list[Any] = [None] * fabric.world_size
    torch.distributed.all_gather_object(everyone, local)
    return [item for part in everyone for item in part]
