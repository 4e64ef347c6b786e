"""The generation engine: prefill each prompt once, expand it to ``n`` rows, decode all rows in batches.

    prompts --prefill (ragged, no padding)--> state [P] --repeat_interleave(n)--> state [P*n]
            --DecodeSession: sample, stop checks, batched step, finished rows leave--> completions

``max_decode_batch_size`` splits the completions into waves that are decoded one after the other; a wave
holds whole prompt groups when ``n`` fits, otherwise one prompt's samples in slices. Every completion has
its own random stream (seeded from ``seed`` and its position in the output), so the output does not depend
on how it was batched (up to float rounding: the batched products of different batch sizes may round
differently). Seeded generation decodes on the CPU with the plain weight layout (``cpu_linear.PINNED_CHOOSER``)
rather than the fastest one timed, so that the same seed samples the same tokens whatever the machine's load.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rwkvtune.generation.cpu_linear import PINNED_CHOOSER
from rwkvtune.generation.decode_step import make_step_fn
from rwkvtune.generation.params import SamplingParams
from rwkvtune.generation.prefill import prefill
from rwkvtune.generation.randomness import completion_seed
from rwkvtune.generation.results import Completion
from rwkvtune.generation.session import DecodeSession
from rwkvtune.tokenizer import WorldTokenizer

Prompt = str | Sequence[int]


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> WorldTokenizer:
    """The RWKV World tokenizer, loaded once (decodes completions when no tokenizer is given)."""
    return WorldTokenizer.default()


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's ``training`` flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class Wave:
    """Completions decoded together: ``samples`` of each prompt in ``prompts``, from ``first_sample`` on."""

    prompts: tuple[int, ...]
    samples: int
    first_sample: int = 0


def plan_waves(num_prompts: int, n: int, max_batch_size: int) -> list[Wave]:
    """Split ``num_prompts * n`` completions into waves of at most ``max_batch_size`` rows (-1: one wave)."""
    if max_batch_size == -1 or num_prompts * n <= max_batch_size:
        return [Wave(tuple(range(num_prompts)), n)]
    if n <= max_batch_size:
        per_wave = max_batch_size // n
        return [Wave(tuple(range(start, min(start + per_wave, num_prompts))), n)
                for start in range(0, num_prompts, per_wave)]
    return [Wave((p,), min(max_batch_size, n - first), first)
            for p in range(num_prompts) for first in range(0, n, max_batch_size)]


class GenerationEngine:
    """Batched generation for one model.

    Args:
        model: an ``RWKV7`` (decoded with the in-place single-token path) or any module with ``forward``,
            ``step``, ``initial_state`` and ``config.vocab_size`` in the same conventions.
        tokenizer: encodes string prompts and decodes completions. Without one, completions are decoded
            with the RWKV World vocabulary (the one RWKV-7 models use), and string prompts are an error:
            prompt ids are never guessed.
        prefill_chunk_size: most prompt tokens per row in one forward call.
        max_prefill_batch_size: most prompts in one prefill forward call (-1: all).
        max_decode_batch_size: most completions decoded together (-1: all).
    """

    def __init__(self, model: nn.Module, tokenizer: WorldTokenizer | None = None, *, prefill_chunk_size: int = 2048,
                 max_prefill_batch_size: int = -1, max_decode_batch_size: int = -1):
        problems = []
        if not _is_int(prefill_chunk_size) or prefill_chunk_size < 1:
            problems.append(f"prefill_chunk_size must be an int >= 1, got {prefill_chunk_size!r}")
        for name, value in (("max_prefill_batch_size", max_prefill_batch_size),
                            ("max_decode_batch_size", max_decode_batch_size)):
            if not _is_int(value) or (value < 1 and value != -1):
                problems.append(f"{name} must be an int >= 1 or -1 (unbounded), got {value!r}")
        if problems:
            raise ValueError("invalid generation engine settings:\n  - " + "\n  - ".join(problems))
        self.model = model
        self.tokenizer = tokenizer
        self.prefill_chunk_size = prefill_chunk_size
        self.max_prefill_batch_size = max_prefill_batch_size
        self.max_decode_batch_size = max_decode_batch_size
        make_step_fn(model)  # refuses a model it cannot decode now, not at the first generation

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams,
                 prompt_seeds: Sequence[int] | None = None) -> list[Completion]:
        """``params.n`` completions per prompt, ordered prompt-major (prompt 0's samples first).

        ``prompt_seeds``: one seed per prompt instead of ``params.seed``; a prompt's completions then do
        not depend on which other prompts share the call (GRPO over several processes).
        """
        out: list[Completion] = []
        with inference(self.model):
            for session in self.sessions(prompts, params, prompt_seeds):
                while not session.finished:
                    session.advance()
                out.extend(session.completions())
        return out

    def sessions(self, prompts: Sequence[Prompt], params: SamplingParams,
                 prompt_seeds: Sequence[int] | None = None) -> Iterator[DecodeSession]:
        """One :class:`DecodeSession` per wave, each prefilled when reached; advance it until finished
        before taking the next. Use under :func:`inference`."""
        ids = self.encode_prompts(prompts)
        if prompt_seeds is not None and len(prompt_seeds) != len(ids):
            raise ValueError(f"{len(prompt_seeds)} prompt_seeds for {len(ids)} prompts")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        tokenizer = self.tokenizer if self.tokenizer is not None else default_tokenizer()
        # A decoder per call: it may keep copies of the weights, which training between calls changes.
        # Seeded sampling takes a weight layout that no timing picks, so that it samples the same under any load.
        seeded = params.seed is not None or prompt_seeds is not None
        step_fn = make_step_fn(self.model, PINNED_CHOOSER if seeded else None)
        prefilled: tuple[int, ...] = ()
        for wave in plan_waves(len(ids), params.n, self.max_decode_batch_size):
            if wave.prompts != prefilled:  # a prompt whose samples span several waves is prefilled once
                state, logits = prefill(self.model, [ids[p] for p in wave.prompts], chunk_size=self.prefill_chunk_size,
                                        max_batch_size=self.max_prefill_batch_size)
                prefilled = wave.prompts
            samples = range(wave.first_sample, wave.first_sample + wave.samples)
            rows = [(p, s, ids[p]) for p in wave.prompts for s in samples]
            # repeat_interleave copies: the session updates its rows in place while the prefilled state
            # may serve the next wave.
            yield DecodeSession(
                step_fn, state.repeat_interleave(wave.samples),
                logits.repeat_interleave(wave.samples, dim=0), params=params, tokenizer=tokenizer,
                prompt_ids=rows, seeds=[completion_seed(seed, p * params.n + s) if prompt_seeds is None
                                        else completion_seed(prompt_seeds[p], s) for p, s, _ in rows])

    def encode_prompts(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids of every prompt; one ``ValueError`` lists every bad prompt."""
        vocab_size = self.model.config.vocab_size
        out: list[list[int]] = []
        problems: list[str] = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    problems.append(f"prompt {index} is a string: pass tokenizer=... to encode it "
                                    "(or pass token ids)")
                    continue
                ids = self.tokenizer.encode(prompt)
            else:
                ids = [int(i) for i in prompt]
            if not ids:
                problems.append(f"prompt {index} is empty (RWKV needs at least one token to predict from)")
            elif min(ids) < 0 or max(ids) >= vocab_size:
                problems.append(f"prompt {index} has token ids outside [0, {vocab_size})")
            out.append(ids)
        if not prompts:
            problems.append("no prompts given")
        if problems:
            raise ValueError("invalid prompts:\n  - " + "\n  - ".join(problems))
        return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
