"""User-facing generation: ``generate`` (batched), ``stream_text`` (one prompt, text as it comes), ``chat``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral
from typing import Any

import torch
from torch import nn

from rwkvtune.generation.engine import GenerationEngine, Prompt, inference
from rwkvtune.generation.params import SamplingParams
from rwkvtune.generation.results import Completion
from rwkvtune.tokenizer import WorldTokenizer


def generate(
    model: nn.Module,
    prompts: Prompt | Sequence[Prompt],
    params: SamplingParams | None = None,
    tokenizer: WorldTokenizer | None = None,
    *,
    prefill_chunk_size: int = 2048,
    max_prefill_batch_size: int = -1,
    max_decode_batch_size: int = -1,
    prompt_seeds: Sequence[int] | None = None,
) -> list[Completion]:
    """Sample ``params.n`` completions for every prompt.

    Args:
        model: an ``RWKV7`` (any dtype and device). It runs in eval mode without autograd; its
            ``training`` flag is restored afterwards.
        prompts: a list of prompts, each a string (needs ``tokenizer``) or token ids; a single string or
            a single list of ids is one prompt.
        params: sampling settings; default: the model's ``generation_config`` (hub directory) or
            ``SamplingParams()``.
        tokenizer: encodes string prompts, decodes completions (default for decoding: RWKV World).
        prefill_chunk_size, max_prefill_batch_size, max_decode_batch_size: memory bounds, see
            :class:`GenerationEngine`.
        prompt_seeds: one seed per prompt instead of ``params.seed``: each prompt's samples are then the
            same whatever other prompts share the call.

    Returns:
        One :class:`Completion` per sample, prompt-major: prompt 0's ``n`` samples, then prompt 1's, ...
    """
    engine = GenerationEngine(model, tokenizer, prefill_chunk_size=prefill_chunk_size,
                              max_prefill_batch_size=max_prefill_batch_size,
                              max_decode_batch_size=max_decode_batch_size)
    return engine.generate(_as_prompt_list(prompts), params or default_params(model), prompt_seeds)


def stream_text(
    model: nn.Module,
    prompt: Prompt,
    params: SamplingParams | None = None,
    tokenizer: WorldTokenizer | None = None,
    *,
    prefill_chunk_size: int = 2048,
) -> Iterator[str]:
    """Generate one completion of ``prompt`` and yield its text in pieces as tokens arrive.

    The pieces concatenate to the completion's ``text``. Text that could still turn out to be the
    start of a stop string (e.g. a single trailing "\\n" when stopping at "\\n\\n") is held back until
    the next token decides, so nothing at or past a stop string is ever yielded.
    """
    params = params or default_params(model)
    if params.n != 1:
        raise ValueError(f"stream_text generates one completion; got n={params.n}")
    engine = GenerationEngine(model, tokenizer, prefill_chunk_size=prefill_chunk_size)
    # Grad mode and eval mode are set per step, not across ``yield``: the caller's code between pieces
    # must run with its own settings.
    with inference(model):
        session = next(engine.sessions([prompt], params))
    emitted = 0
    while not session.finished:
        with inference(model):
            session.advance()
        text = session.texts[0].settled_text()
        if len(text) > emitted:
            yield text[emitted:]
            emitted = len(text)
    text = session.texts[0].finish()
    if len(text) > emitted:
        yield text[emitted:]


def chat(
    model: nn.Module,
    messages: Sequence[Mapping[str, Any]],
    tokenizer: WorldTokenizer,
    params: SamplingParams | None = None,
    **template_kwargs: Any,
) -> str:
    """The assistant's reply to ``messages`` (``[{"role": "user", "content": ...}, ...]``).

    The prompt is ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)``
    (e.g. ``enable_thinking=True``); generation stops at the turn separator "\\n\\n" by default. The
    reply is returned without surrounding whitespace (the model writes " Hello" after "Assistant:").
    """
    params = params or default_params(model)
    if params.n != 1:
        raise ValueError(f"chat returns one reply; got n={params.n}")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    return generate(model, [prompt], params, tokenizer)[0].text.strip()


def default_params(model: nn.Module) -> SamplingParams:
    """``SamplingParams`` from the model's hub ``generation_config`` when it has one, else the defaults."""
    config = getattr(model, "generation_config", None)
    return SamplingParams.from_generation_config(config) if isinstance(config, Mapping) else SamplingParams()


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """A single prompt (a string, or a flat sequence of ids) becomes a list of one; a tensor of ids
    ``[T]`` or ``[B, T]`` becomes lists."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        return [prompts.tolist()] if prompts.dim() == 1 else prompts.tolist()
    prompts = list(prompts)
    if prompts and all(isinstance(p, Integral) for p in prompts):
        return [prompts]
    return prompts
