"""Log-probabilities of sampled completions under a policy, with each prompt read once.

A GRPO micro-batch holds ``G`` completions of each prompt. An RNN can read the prompt once and start all
``G`` completions from copies of its state (as the generation engine samples them), and autograd carries
the completions' gradients back through those copies into the single prompt pass. Completion token ``t``
is scored by the distribution after the token before it: the prompt's last token feeds the first
position, so the prompt is read up to its second-to-last token and the completions run from there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from rwkvtune.model import RWKVState
from rwkvtune.model.loss import IGNORE_INDEX


def score_completions(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, *, num_generations: int, temperature: float = 1.0,
                      prompt_scope: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs [N, C], entropies [N, C])`` of ``completion_ids`` (0 where ``completion_mask`` is false).

    Args:
        model: has ``score(input_ids, targets, state, temperature=...)`` and ``initial_state(B)`` (an
            ``RWKV7``, a LoRA- or state-tuned one, or Fabric's wrapper with ``score`` marked as a forward
            method).
        prompt_ids: the ``P`` prompts, each non-empty.
        completion_ids: ``[N, C]`` with ``N = P * num_generations``, prompt-major (prompt 0's completions
            first); right-padded.
        completion_mask: ``[N, C]`` bool, true on real completion tokens.
        num_generations: completions per prompt.
        temperature: the sampling temperature (the scores are of ``softmax(logits / temperature)``).
        prompt_scope: wraps the prompt forwards (under DDP: not the forward that arms the gradient sync;
            the completions' forward, which the caller wraps, is).
    """
    if len(prompt_ids) * num_generations != completion_ids.shape[0]:
        raise ValueError(f"{completion_ids.shape[0]} completions for {len(prompt_ids)} prompts x "
                         f"{num_generations} generations")
    device = completion_ids.device
    states = []
    for prompt in prompt_ids:
        if len(prompt) > 1:
            ids = torch.tensor([list(prompt[:-1])], device=device)
            with prompt_scope():
                states.append(model.score(ids, torch.full_like(ids, IGNORE_INDEX), temperature=temperature).state)
        else:
            states.append(model.initial_state(1))
    start = RWKVState.cat(states).repeat_interleave(num_generations)
    last_prompt_token = torch.tensor([p[-1] for p in prompt_ids], device=device).repeat_interleave(num_generations)
    inputs = torch.cat([last_prompt_token[:, None], completion_ids[:, :-1]], dim=1)           # [N, C]
    targets = completion_ids.masked_fill(~completion_mask.bool(), IGNORE_INDEX)
    scores = model.score(inputs, targets, start, temperature=temperature)
    return scores.logprobs, scores.entropies
