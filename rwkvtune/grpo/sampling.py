"""Sampling one GRPO rollout: ``G`` completions per prompt from the generation engine, the post-processing
hook, the truncation mask, the rewards, and the advantages from the rewards of every process.

No Fabric: under DDP the caller passes ``gather``, which every process calls at the same points.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rwkvtune.config.grpo import GRPOConfig
from rwkvtune.data.prompts import PromptRow
from rwkvtune.generation import SamplingParams, generate, pad_completions
from rwkvtune.grpo.advantages import compute_advantages
from rwkvtune.grpo.rewards import RewardFunc, RewardState, compute_rewards
from rwkvtune.grpo.rollout import Rollout
from rwkvtune.model import base_model_of
from rwkvtune.tokenizer import WorldTokenizer

logger = logging.getLogger(__name__)

PostprocessFn = Callable[..., dict[str, Any]]
#: ``[n, ...]`` on this process -> ``[world * n, ...]`` of every process in rank order, on the CPU.
Gather = Callable[[torch.Tensor], torch.Tensor]


def _one_process(local: torch.Tensor) -> torch.Tensor:
    return local


class RolloutSampler:
    """Samples this process's share of each rollout and rewards it.

    Args:
        model: the policy to sample from (the module itself, not Fabric's wrapper).
        tokenizer: decodes the completions (and reaches the post-processing hook).
        config: the run's ``GRPOConfig`` (sampling, reward and advantage fields).
        reward_funcs, reward_names: the reward functions and their metric names.
        postprocess: the ``completion_postprocess_fn`` hook, or ``None``.
        gather: collects a tensor from every process (the identity on one process).
        rank, world_size: this process's global rank and the number of processes.
    """

    def __init__(self, model: nn.Module, tokenizer: WorldTokenizer, config: GRPOConfig,
                 reward_funcs: Sequence[RewardFunc], reward_names: Sequence[str], *,
                 postprocess: PostprocessFn | None = None, gather: Gather = _one_process, rank: int = 0,
                 world_size: int = 1):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.reward_funcs, self.reward_names = list(reward_funcs), list(reward_names)
        self.postprocess, self.gather, self.rank, self.world_size = postprocess, gather, rank, world_size

    def sample(self, index: int, prompts: list[PromptRow], indices: list[int],
               trainer_state: RewardState) -> tuple[Rollout, dict[str, float]]:
        """Rollout ``index`` of ``prompts`` (dataset rows ``indices``), without log-probs, and its metrics
        (completion lengths and rewards over every process, the sampling and reward times)."""
        c = self.config
        g = c.num_generations
        started = time.perf_counter()
        generation = getattr(base_model_of(self.model), "generation_config", None) or {}
        params = SamplingParams(
            n=g, max_new_tokens=c.max_completion_length, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
            repetition_penalty=c.repetition_penalty,
            stop=tuple(generation.get("stop", SamplingParams.stop)),
            stop_token_ids=tuple(generation.get("stop_token_ids", SamplingParams.stop_token_ids)))
        sampled = generate(self.model, [p.ids for p in prompts], params, self.tokenizer,
                           prefill_chunk_size=c.prefill_chunk_size, max_prefill_batch_size=c.max_prefill_batch_size,
                           max_decode_batch_size=c.max_decode_batch_size,
                           prompt_seeds=[rollout_seed(c.seed, index, i) for i in indices])
        padded = pad_completions(sampled)
        ids, mask = padded.token_ids, padded.mask
        texts = [completion.text for completion in sampled]
        finish = [completion.finish_reason for completion in sampled]
        shown = [p.prompt for p in prompts for _ in range(g)]
        columns = {key: [p.columns.get(key) for p in prompts for _ in range(g)]
                   for key in dict.fromkeys(k for p in prompts for k in p.columns)}
        if self.postprocess is not None:
            texts, ids, mask = _postprocess(self.postprocess, shown, texts, ids, mask, self.tokenizer, columns)
        sampled_mask = mask
        if c.mask_truncated_completions:
            mask = mask & ~torch.tensor([reason == "length" for reason in finish])[:, None]
        sampled_at = time.perf_counter()

        completions = [[{"role": "assistant", "content": text}] if p.conversational else text
                       for p, text in zip((p for p in prompts for _ in range(g)), texts)]
        rewards_per_func = compute_rewards(
            self.reward_funcs, self.reward_names, prompts=shown, completions=completions,
            completion_ids=[row[keep].tolist() for row, keep in zip(ids, sampled_mask)], columns=columns,
            trainer_state=trainer_state)
        rewarded_at = time.perf_counter()
        _warn_unscored(rewards_per_func, shown, texts, self.reward_names, index, self.world_size > 1)
        everyone = self.gather(rewards_per_func)                                 # [world * N, K]
        weights = None if c.reward_weights is None else torch.tensor(c.reward_weights, dtype=torch.float64)
        advantages, stats = compute_advantages(everyone, g, weights=weights, scale_rewards=c.scale_rewards,
                                               multi_objective_aggregation=c.multi_objective_aggregation)
        advantages = shape_advantages(advantages, stats.rewards, c)
        n = len(texts)
        mine = slice(self.rank * n, (self.rank + 1) * n)
        num_items = float(self.gather(mask.sum().to(torch.float32).reshape(1)).sum())
        rollout = Rollout(index, prompts, indices, ids, sampled_mask, mask, texts, finish, rewards_per_func,
                          stats.rewards[mine], advantages[mine].float(), num_items)

        lengths = self.gather(sampled_mask.sum(dim=1, keepdim=True).double()).squeeze(1)
        clipped = self.gather(torch.tensor([[reason == "length"] for reason in finish], dtype=torch.float64)).squeeze(1)
        terminated = lengths[clipped == 0]
        metrics = {"completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
                   "completions/max_length": float(lengths.max()), "completions/clipped_ratio": float(clipped.mean()),
                   "completions/mean_terminated_length": float(terminated.mean()) if len(terminated) else 0.0,
                   "reward": stats.reward_mean, "reward_std": stats.reward_std,
                   "frac_reward_zero_std": stats.frac_reward_zero_std,
                   "time/rollout": sampled_at - started, "time/reward": rewarded_at - sampled_at}
        for name, mean, std in zip(self.reward_names, stats.per_function_mean, stats.per_function_std):
            metrics[f"rewards/{name}/mean"], metrics[f"rewards/{name}/std"] = float(mean), float(std)
        return rollout, metrics


def shape_advantages(advantages: torch.Tensor, rewards: torch.Tensor, config: GRPOConfig) -> torch.Tensor:
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


def rollout_seed(seed: int, rollout: int, prompt: int) -> int:
    """A sampling seed per (run seed, rollout, dataset prompt): a resumed run samples the same completions
    (seeded sampling also takes a fixed decode layout), and a run split over another number of processes
    draws the same random numbers (its logits may differ by the rounding of other batch sizes)."""
    digest = hashlib.sha256(f"{seed}/{rollout}/{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


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
