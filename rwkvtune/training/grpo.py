"""``GRPOTrainer``: group relative policy optimisation with TRL 1.16's advantages and losses, on an RNN.

One rollout takes ``steps_per_generation x micro_bsz`` prompts: each prompt is read once by the generation
engine and its state copied to its ``num_generations`` completions; the rewards, advantages and (when
needed) old and reference log-probs are computed at once. The rollout then serves ``steps_per_generation x
num_iterations`` micro-steps, each the loss of ``micro_bsz`` prompt groups (their prompts again read once
in the training forward). ``accumulate_grad_batches`` micro-steps make an optimizer step. All of it runs
in the shared training loop (``engine.loop.fit``), with its checkpoints, exact resume and metrics.

Where this differs from TRL: micro-batches hold whole prompt groups (TRL shuffles completions across
them), so that a prompt is read once per forward. What is local to a micro-batch can then differ: ``bnpo``'s
token mean, the ``top_entropy_quantile`` threshold, and with ``steps_per_generation > accumulate_grad_batches``
which completions an optimizer step sees. Rewards come from Python callables only (no reward models). With
an adapter already trained when passed in, the reference is the base with it switched off (TRL copies the
initial adapter).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rwkvtune.config.grpo import GRPOConfig
from rwkvtune.data.prompts import PromptRow, prepare_prompts
from rwkvtune.engine.checkpoint import TrainProgress
from rwkvtune.engine.data_order import epoch_micro_batches
from rwkvtune.engine.loop import Workload
from rwkvtune.engine.steps import Backprop, with_gradient_path
from rwkvtune.generation import SamplingParams, generate, pad_completions
from rwkvtune.grpo import GRPOLossSettings, compute_advantages, grpo_loss
from rwkvtune.grpo.rewards import RewardFunc, RewardState, compute_rewards, reward_names
from rwkvtune.grpo.scoring import score_completions
from rwkvtune.model import base_model_of
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.engine.master_weights import hold_for_training
from rwkvtune.training.base import COMPUTE_DTYPES, BaseTrainer

logger = logging.getLogger(__name__)

ROLLOUT_BUFFER_FILE = "rollout_buffer.pt"
PostprocessFn = Callable[..., dict[str, Any]]


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
        self._rollouts: _Rollouts | None = None

    def _prepare_data(self) -> None:
        base = base_model_of(self.model)
        self._prompts = prepare_prompts(self.train_dataset, tokenizer=self.tokenizer,
                                        max_prompt_length=self.args.max_prompt_length,
                                        vocab_size=base.config.vocab_size)
        # The starting policy, for the KL: full fine-tuning keeps a frozen copy; state tuning the starting
        # state beside the shared base; LoRA switches the adapter off (no second copy of the weights).
        self._reference = None
        if self.args.beta != 0 and not self.trains_adapter:
            self._reference = copy.deepcopy(base).eval().requires_grad_(False)
            # held as the policy's frozen weights would be, so that the first step's KL is 0
            hold_for_training(self._reference, COMPUTE_DTYPES[self.args.precision])
        elif self.args.beta != 0 and hasattr(self.model, "time_state"):
            from rwkvtune.peft import StateTunedModel

            self._reference = StateTunedModel(base, self.model.time_state.detach()).requires_grad_(False)

    def _workload(self, fabric, model, progress: TrainProgress) -> Workload:
        if self._reference is not None:
            self._reference = fabric.to_device(self._reference)
        model.mark_forward_method("score")  # scoring runs through Fabric's wrapper (autocast, DDP)
        self._rollouts = _Rollouts(self, fabric, model, progress, self._resumed_buffer)
        return self._rollouts.workload()

    def _checkpoint_files(self, directory: Path) -> None:
        if self._rollouts is not None:
            self._rollouts.save_buffer(directory)

    def _resume_files(self, checkpoint: Path) -> None:
        path = checkpoint / ROLLOUT_BUFFER_FILE
        self._resumed_buffer = torch.load(path, weights_only=True) if path.is_file() else None


@dataclass
class _Rollout:
    """One rollout of ``P`` prompts x ``G`` completions (this process's share), and what the loss needs.

    Tensors are ``[N, C]`` / ``[N]`` with ``N = P x G``, prompt-major, on the CPU. ``sampled_mask`` marks
    the sampled tokens (what the rewards see); ``mask`` the tokens in the loss (truncated completions left
    out under ``mask_truncated_completions``).
    """

    index: int
    prompts: list[PromptRow]
    indices: list[int]
    completion_ids: torch.Tensor
    sampled_mask: torch.Tensor
    mask: torch.Tensor
    completions: list[str]
    finish_reasons: list[str]
    rewards_per_func: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    num_items: float
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None


class _Rollouts:
    """The GRPO workload: plans micro-steps over rollouts, samples and scores rollouts, runs the loss."""

    def __init__(self, trainer: GRPOTrainer, fabric, model, progress: TrainProgress,
                 resumed: dict[str, Any] | None):
        self.trainer, self.fabric, self.model, self.progress = trainer, fabric, model, progress
        self.config: GRPOConfig = trainer.args
        c = self.config
        # every loss knob is the config field of the same name
        self.settings = GRPOLossSettings(**{f.name: getattr(c, f.name) for f in dataclasses.fields(GRPOLossSettings)})
        self.buffer: _Rollout | None = None
        self._resumed = resumed
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._windows = 0
        # completions trained on in the current window, and how many of them had a reward
        self._window_rows = self._window_rewarded = 0

    def workload(self) -> Workload:
        return Workload(plan=self.plan, prepare=dict, micro_step=self.micro_step, normalise=self.normalise,
                        tokens=lambda batch: batch.get("num_tokens", 0), metrics=self.metrics,
                        before_update=self.before_update)

    # ---- plan ---------------------------------------------------------------------------------------

    def plan(self, epoch: int, rank: int, world_size: int) -> list[list[dict[str, Any]]]:
        """Windows of micro-steps: rollout ``r`` holds ``S`` micro-batches of prompts and gives ``S x mu``
        micro-steps (its slices in order, ``mu`` times); ``GA`` micro-steps make a window."""
        c = self.config
        batches = epoch_micro_batches(len(self.trainer._prompts), epoch=epoch, seed=c.seed, micro_bsz=c.micro_bsz,
                                      rank=rank, world_size=world_size)
        per_epoch = len(batches) // c.steps_per_generation
        if per_epoch == 0:
            raise ValueError(f"a rollout takes steps_per_generation x micro_bsz = {c.steps_per_generation} x "
                             f"{c.micro_bsz} prompts per process, but {len(self.trainer._prompts)} prompts give "
                             f"{len(batches)} micro-batch(es) on {world_size} process(es): add prompts or lower them")
        items = []
        for r in range(per_epoch):
            groups = batches[r * c.steps_per_generation:(r + 1) * c.steps_per_generation]
            for _ in range(c.num_iterations):
                items += [{"rollout": epoch * per_epoch + r, "slice": s, "groups": groups}
                          for s in range(c.steps_per_generation)]
        windows = [items[i:i + c.accumulate_grad_batches] for i in range(0, len(items), c.accumulate_grad_batches)]
        return windows[:c.epoch_steps] if c.epoch_steps else windows

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
            names = ", ".join(repr(name) for name in self.trainer.reward_names)
            raise ValueError(
                f"no completion of optimizer step {step} had a reward: the reward function(s) {names} returned "
                f"None or NaN for all {rows} completions it trained on"
                f"{' (on every process)' if self.fabric.world_size > 1 else ''}, so every advantage is 0 and the "
                "step would learn nothing from the rewards. Training stopped before the update. At least one "
                "reward function must return a number for every completion (None only where another one scores it)")

    # ---- one micro-step -----------------------------------------------------------------------------

    def micro_step(self, model, batch: dict[str, Any], backprop: Backprop) -> torch.Tensor:
        c = self.config
        rollout = self._rollout_for(batch)
        g = c.num_generations
        first = sum(len(group) for group in batch["groups"][:batch["slice"]])
        prompts = rollout.prompts[first:first + len(batch["groups"][batch["slice"]])]
        rows = slice(first * g, (first + len(prompts)) * g)
        self._window_rows += len(prompts) * g
        self._window_rewarded += int((~torch.isnan(rollout.rewards_per_func[rows])).any(dim=1).sum())
        device = self.fabric.device
        ids, mask = rollout.completion_ids[rows].to(device), rollout.mask[rows].to(device)
        advantages = rollout.advantages[rows].to(device)
        old = None if rollout.old_logps is None else rollout.old_logps[rows].to(device)
        ref = None if rollout.ref_logps is None else rollout.ref_logps[rows].to(device)
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
                    lp, ent = score_completions(model, [p.ids for p in prompts[start:start + per_forward]],
                                                ids[part], mask[part], num_generations=g, temperature=c.temperature,
                                                prompt_scope=lambda: backprop.scope(final=False))
                loss, _ = grpo_loss(
                    lp, mask[part], advantages[part], self.settings,
                    old_logps=None if old is None else old[part], ref_logps=None if ref is None else ref[part],
                    entropies=ent, num_items_in_batch=rollout.num_items, num_processes=self.fabric.world_size,
                    grad_accum=c.accumulate_grad_batches, steps_per_generation=c.steps_per_generation,
                    batch_rows=len(prompts) * g, batch_tokens=float(mask.sum()), gather=self._gather_values)
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
                                   num_processes=self.fabric.world_size, gather=self._gather_values)
        self._add({**metrics, "time/train": forward_time + backward_time, "time/logprob": forward_time,
                   "time/backward": backward_time})
        batch["num_tokens"] = int(mask.sum()) + sum(len(p.ids) for p in prompts)
        return torch.stack(losses).sum()

    # ---- rollouts -----------------------------------------------------------------------------------

    def _rollout_for(self, batch: dict[str, Any]) -> _Rollout:
        if self.buffer is None or self.buffer.index != batch["rollout"]:
            indices = [i for group in batch["groups"] for i in group]
            prompts = [self.trainer._prompts[i] for i in indices]
            saved, self._resumed = self._resumed, None
            key = self._buffer_key(batch["rollout"], indices)
            if saved is not None and saved.pop("key") == key:
                self.buffer = _Rollout(prompts=prompts, indices=indices, **saved)
            else:
                self.buffer = self._sample(batch["rollout"], prompts, indices)
        return self.buffer

    def _sample(self, index: int, prompts: list[PromptRow], indices: list[int]) -> _Rollout:
        """Sample, post-process, reward and score one rollout."""
        c, fabric, trainer = self.config, self.fabric, self.trainer
        g = c.num_generations
        started = time.perf_counter()
        generation = getattr(base_model_of(trainer.model), "generation_config", None) or {}
        params = SamplingParams(
            n=g, max_new_tokens=c.max_completion_length, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
            repetition_penalty=c.repetition_penalty,
            stop=tuple(generation.get("stop", SamplingParams.stop)),
            stop_token_ids=tuple(generation.get("stop_token_ids", SamplingParams.stop_token_ids)))
        sampled = generate(trainer.model, [p.ids for p in prompts], params, trainer.tokenizer,
                           prefill_chunk_size=c.prefill_chunk_size, max_prefill_batch_size=c.max_prefill_batch_size,
                           max_decode_batch_size=c.max_decode_batch_size,
                           prompt_seeds=[_rollout_seed(c.seed, index, i) for i in indices])
        padded = pad_completions(sampled)
        ids, mask = padded.token_ids, padded.mask
        texts = [completion.text for completion in sampled]
        finish = [completion.finish_reason for completion in sampled]
        shown = [p.prompt for p in prompts for _ in range(g)]
        columns = {key: [p.columns.get(key) for p in prompts for _ in range(g)]
                   for key in dict.fromkeys(k for p in prompts for k in p.columns)}
        if trainer.completion_postprocess_fn is not None:
            texts, ids, mask = _postprocess(trainer.completion_postprocess_fn, shown, texts, ids, mask,
                                            trainer.tokenizer, columns)
        sampled_mask = mask
        if c.mask_truncated_completions:
            mask = mask & ~torch.tensor([reason == "length" for reason in finish])[:, None]
        sampled_at = time.perf_counter()

        completions = [[{"role": "assistant", "content": text}] if p.conversational else text
                       for p, text in zip((p for p in prompts for _ in range(g)), texts)]
        rewards_per_func = compute_rewards(
            trainer.reward_funcs, trainer.reward_names, prompts=shown, completions=completions,
            completion_ids=[row[keep].tolist() for row, keep in zip(ids, sampled_mask)], columns=columns,
            trainer_state=RewardState(self.progress.step, self.progress.epoch, self._total_steps()))
        rewarded_at = time.perf_counter()
        _warn_unscored(rewards_per_func, shown, texts, trainer.reward_names, index, fabric.world_size > 1)
        everyone = self._gather(rewards_per_func)                                # [world * N, K]
        weights = None if c.reward_weights is None else torch.tensor(c.reward_weights, dtype=torch.float64)
        advantages, stats = compute_advantages(everyone, g, weights=weights, scale_rewards=c.scale_rewards,
                                               multi_objective_aggregation=c.multi_objective_aggregation)
        advantages = _shape_advantages(advantages, stats.rewards, c)
        n = len(texts)
        mine = slice(fabric.global_rank * n, (fabric.global_rank + 1) * n)
        num_items = float(fabric.all_reduce(mask.sum().to(fabric.device, torch.float32), reduce_op="sum"))
        rollout = _Rollout(index, prompts, indices, ids, sampled_mask, mask, texts, finish, rewards_per_func,
                           stats.rewards[mine], advantages[mine].float(), num_items, None, None)
        if c.needs_old_logprobs:
            rollout.old_logps = self._logprobs(self.model, prompts, ids, mask)
        if c.beta != 0:
            rollout.ref_logps = self._reference_logprobs(prompts, ids, mask)

        lengths = self._gather(sampled_mask.sum(dim=1, keepdim=True).double()).squeeze(1)
        clipped = self._gather(torch.tensor([[reason == "length"] for reason in finish], dtype=torch.float64)).squeeze(1)
        terminated = lengths[clipped == 0]
        metrics = {"completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
                   "completions/max_length": float(lengths.max()), "completions/clipped_ratio": float(clipped.mean()),
                   "completions/mean_terminated_length": float(terminated.mean()) if len(terminated) else 0.0,
                   "reward": stats.reward_mean, "reward_std": stats.reward_std,
                   "frac_reward_zero_std": stats.frac_reward_zero_std,
                   "time/rollout": sampled_at - started, "time/reward": rewarded_at - sampled_at}
        for name, mean, std in zip(trainer.reward_names, stats.per_function_mean, stats.per_function_std):
            metrics[f"rewards/{name}/mean"], metrics[f"rewards/{name}/std"] = float(mean), float(std)
        self._add(metrics)
        if c.save_rollout_steps and (self.progress.step + 1) % c.save_rollout_steps == 0:
            self._write_rollout(rollout)
        return rollout

    @torch.no_grad()
    def _logprobs(self, model, prompts: list[PromptRow], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log-probs of a whole rollout under ``model`` (no gradient), in forwards of one micro-batch."""
        c = self.config
        per_forward = (c.logprob_batch_size or c.micro_bsz * c.num_generations) // c.num_generations
        parts = []
        for start in range(0, len(prompts), per_forward):
            rows = slice(start * c.num_generations, (start + per_forward) * c.num_generations)
            with self.fabric.autocast():  # the training forward's precision
                logps, _ = score_completions(model, [p.ids for p in prompts[start:start + per_forward]],
                                             ids[rows].to(self.fabric.device), mask[rows].to(self.fabric.device),
                                             num_generations=c.num_generations, temperature=c.temperature)
            parts.append(logps.float().cpu())
        return torch.cat(parts)

    def _reference_logprobs(self, prompts: list[PromptRow], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log-probs under the starting policy: the adapter switched off, the starting state, or the copy."""
        trainer = self.trainer
        if trainer._reference is not None:  # a frozen copy, or the starting state on the shared base
            return self._logprobs(trainer._reference, prompts, ids, mask)
        with trainer.model.disable_adapter():
            return self._logprobs(self.model, prompts, ids, mask)

    def _gather_values(self, local: torch.Tensor) -> torch.Tensor:
        """``[n]`` values of different ``n`` on each process -> all of them (on every process)."""
        if self.fabric.world_size == 1:
            return local
        longest = int(self.fabric.all_reduce(torch.tensor(float(local.numel()), device=self.fabric.device),
                                             reduce_op="max"))
        padded = torch.full((longest,), math.nan, dtype=local.dtype, device=self.fabric.device)
        padded[:local.numel()] = local
        gathered = self.fabric.all_gather(padded).reshape(-1)
        return gathered[~torch.isnan(gathered)]

    def _total_steps(self) -> int:
        """Optimizer steps of the run (what TRL's ``trainer_state.max_steps`` holds)."""
        per_epoch = len(self.plan(0, self.fabric.global_rank, self.fabric.world_size)) * self.config.epoch_count
        return min(per_epoch, self.config.max_steps) if self.config.max_steps else per_epoch

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` on every process -> ``[world * n, ...]`` in rank order, on the CPU."""
        if self.fabric.world_size == 1:
            return local
        gathered = self.fabric.all_gather(local.to(self.fabric.device))
        return gathered.reshape(-1, *local.shape[1:]).cpu()

    # ---- files and metrics --------------------------------------------------------------------------

    def _write_rollout(self, rollout: _Rollout) -> None:
        """Append one JSON record per completion to ``rollouts_step{N}.jsonl`` (global rank 0)."""
        c, g = self.config, self.config.num_generations
        records = []
        for i, (text, reason) in enumerate(zip(rollout.completions, rollout.finish_reasons)):
            prompt = rollout.prompts[i // g]
            records.append({
                "step": self.progress.step + 1, "rollout": rollout.index, "prompt": prompt.prompt,
                "prompt_ids": prompt.ids, "completion": text,
                "completion_ids": rollout.completion_ids[i][rollout.sampled_mask[i]].tolist(),
                "completion_length": int(rollout.mask[i].sum()), "finish_reason": reason,
                "rewards": {name: _number(value) for name, value in zip(self.trainer.reward_names,
                                                                      rollout.rewards_per_func[i].tolist())},
                "reward": _number(float(rollout.rewards[i])), "advantage": float(rollout.advantages[i])})
        if self.fabric.world_size > 1:
            everyone: list[Any] = [None] * self.fabric.world_size
            torch.distributed.all_gather_object(everyone, records)
            records = [record for part in everyone for record in part]
        if not self.fabric.is_global_zero:
            return
        directory = Path(c.save_rollout_path) if c.save_rollout_path else Path(c.output_dir) / "rollouts"
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"rollouts_step{self.progress.step + 1:06d}.jsonl", "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _buffer_key(self, rollout: int, indices: list[int]) -> list[int]:
        """What a saved rollout must match to be reused: its index, prompts, group size and process count."""
        return [rollout, self.config.num_generations, self.fabric.world_size, *indices]

    def save_buffer(self, directory: Path) -> None:
        """The rollout in use, so that a resume inside it trains on the same completions (one process: under
        DDP only rank 0 writes checkpoint files, and the rollout is sampled again on resume)."""
        if self.buffer is None or self.fabric.world_size > 1:
            return
        b = self.buffer
        torch.save({"key": self._buffer_key(b.index, b.indices), "index": b.index, "completion_ids": b.completion_ids,
                    "sampled_mask": b.sampled_mask, "mask": b.mask, "completions": b.completions,
                    "finish_reasons": b.finish_reasons, "rewards_per_func": b.rewards_per_func, "rewards": b.rewards,
                    "advantages": b.advantages, "num_items": b.num_items, "old_logps": b.old_logps,
                    "ref_logps": b.ref_logps}, directory / ROLLOUT_BUFFER_FILE)

    def _add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, float) and math.isnan(value):
                continue
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def metrics(self) -> dict[str, float]:
        """Means since the last log (times: seconds per optimizer step), averaged over processes."""
        names = sorted(self._sums)
        values = [self._sums[k] / self._windows if k.startswith("time/") else self._sums[k] / self._counts[k]
                  for k in names]
        if self.fabric.world_size > 1 and names:
            values = (self.fabric.all_reduce(torch.tensor(values, device=self.fabric.device), reduce_op="mean")
                      .tolist())
        self._sums, self._counts, self._windows = {}, {}, 0
        if self.config.log_completions and self.buffer is not None and self.fabric.is_global_zero:
            for text, reward in list(zip(self.buffer.completions, self.buffer.rewards.tolist()))[
                    :self.config.num_completions_to_print]:
                print(f"[reward {reward:.3f}] {text!r}")
        return dict(zip(names, values))


def _postprocess(fn: PostprocessFn, prompts: list[Any], texts: list[str], ids: torch.Tensor, mask: torch.Tensor,
                 tokenizer: WorldTokenizer, columns: dict[str, list[Any]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Call the post-processing hook and check its result against the seed README's contract."""
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        out = fn(prompts=prompts, completions=texts, completion_ids=ids, masks=mask, tokenizer=tokenizer, **columns)
    except Exception as err:
        raise RuntimeError(f"completion_postprocess_fn {name!r} raised {type(err).__name__}: {err}") from err
    if not isinstance(out, dict) or not {"completions", "completion_ids", "masks"} <= set(out):
        raise ValueError(f"completion_postprocess_fn {name!r} must return a dict with completions, completion_ids "
                         f"and masks; got {type(out).__name__} {sorted(out) if isinstance(out, dict) else ''}")
    new_texts, new_ids, new_mask = list(out["completions"]), out["completion_ids"], out["masks"]
    problems = []
    if len(new_texts) != len(texts):
        problems.append(f"completions has {len(new_texts)} entries, expected {len(texts)}")
    for key, value in (("completion_ids", new_ids), ("masks", new_mask)):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(ids.shape):
            problems.append(f"{key} must be a tensor of shape [B*G, C] = {list(ids.shape)}, got "
                            f"{list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    if problems:
        raise ValueError(f"completion_postprocess_fn {name!r} broke the contract:\n  - " + "\n  - ".join(problems))
    return new_texts, new_ids.to("cpu", torch.long), new_mask.to("cpu").bool()


def _warn_unscored(rewards_per_func: torch.Tensor, prompts: list[Any], texts: list[str], names: list[str],
                   rollout: int, distributed: bool) -> None:
    """One warning per rollout when some completions got no reward from any function (advantage 0)."""
    unscored = torch.isnan(rewards_per_func).all(dim=1)
    if not bool(unscored.any()):
        return
    first = int(unscored.nonzero()[0])
    logger.warning(
        "%d of %d completions of rollout %d%s have no reward: every reward function (%s) returned None or NaN "
        "for them, so they get advantage 0 and teach nothing. The first one: prompt %s, completion %s. Make at "
        "least one reward function return a number for every completion.",
        int(unscored.sum()), len(texts), rollout, " on this process" if distributed else "", ", ".join(names),
        _shorten(prompts[first]), _shorten(texts[first]))


def _shorten(value: Any, limit: int = 120) -> str:
    """``value``'s repr for a log line (a string's whitespace visible), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _shape_advantages(advantages: torch.Tensor, rewards: torch.Tensor, config: GRPOConfig) -> torch.Tensor:
    """The seed's two knobs on top of TRL's advantages: low-quality groups (best reward below
    ``low_reward_threshold``) scaled by ``low_reward_scale``, then every advantage clamped to
    ``+-advantage_clip``."""
    if config.low_reward_threshold is not None:
        best = torch.nan_to_num(rewards, nan=-math.inf).view(-1, config.num_generations).amax(dim=1)
        low = (best < config.low_reward_threshold).repeat_interleave(config.num_generations)
        advantages = torch.where(low, advantages * config.low_reward_scale, advantages)
    if config.advantage_clip is not None:
        advantages = advantages.clamp(-config.advantage_clip, config.advantage_clip)
    return advantages


def _rollout_seed(seed: int, rollout: int, prompt: int) -> int:
    """A sampling seed per (run seed, rollout, dataset prompt): a resumed run samples the same completions
    (seeded sampling also takes a fixed decode layout), and a run split over another number of processes
    draws the same random numbers (its logits may differ by the rounding of other batch sizes)."""
    digest = hashlib.sha256(f"{seed}/{rollout}/{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value
