"""``SamplingParams``: what to sample and when to stop, validated in one place."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions (defaults = a hub directory's ``generation_config.json``).

    Processing order for every row and step: penalties on the model's logits, then temperature, then
    top-k, then top-p (on the probabilities renormalised after top-k), then one draw.

    Attributes:
        max_new_tokens: completion length limit (``finish_reason == "length"`` when reached).
        temperature: divides the logits; ``0`` means greedy (argmax after penalties).
        top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability sums to
            at least ``top_p`` (``1.0`` = off).
        top_k: keep only the ``top_k`` most likely tokens (``0`` = off).
        repetition_penalty: as in Hugging Face: a token already generated in this completion has its
            logit divided by this value when positive, multiplied when negative (``1.0`` = off).
        presence_penalty: subtracted once from the logit of every token already generated (the ``rwkv``
            runtime's ``alpha_presence``).
        frequency_penalty: subtracted per earlier occurrence of the token (``alpha_frequency``). Unlike
            the runtime there is no decay and no whitespace exemption: counts are plain.
        stop: stop when the decoded completion contains one of these strings; the returned text ends
            before it. A single string is one stop string.
        stop_token_ids: stop after sampling one of these ids (default 0, the end-of-document id).
        seed: makes sampling reproducible; ``None`` draws one from torch's global generator.
        n: completions per prompt (a GRPO group); the prompt is prefilled once.

    Penalties count only the tokens generated in the completion, never the prompt (as in the ``rwkv``
    runtime), so a long chat history does not push the reply away from words it already contains.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ("\n\n",)
    stop_token_ids: tuple[int, ...] = (0,)
    seed: int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        # A bare string would otherwise be read as a sequence of one-character stop strings.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, Sequence):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, Integral):
            object.__setattr__(self, "stop_token_ids", (self.stop_token_ids,))
        elif isinstance(self.stop_token_ids, Sequence):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        problems = self.problems()
        if problems:
            raise ValueError("invalid SamplingParams:\n  - " + "\n  - ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature of the returned logprobs: the sampling one, or 1 for greedy decoding."""
        return self.temperature if self.temperature > 0 else 1.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def problems(self) -> list[str]:
        """Every invalid value, described (empty when all are valid)."""
        out: list[str] = []
        _check_int(out, "max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int(out, "top_k", self.top_k, minimum=0)
        _check_int(out, "n", self.n, minimum=1)
        if self.seed is not None:
            _check_int(out, "seed", self.seed, minimum=0)
        if _check_real(out, "temperature", self.temperature) and self.temperature < 0:
            out.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if _check_real(out, "top_p", self.top_p) and not 0 < self.top_p <= 1:
            out.append(f"top_p must be in (0, 1], got {self.top_p}")
        if _check_real(out, "repetition_penalty", self.repetition_penalty) and self.repetition_penalty <= 0:
            out.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        _check_real(out, "presence_penalty", self.presence_penalty)
        _check_real(out, "frequency_penalty", self.frequency_penalty)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            out.append(f"stop must be a string or a sequence of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, tuple) or not all(
                isinstance(i, Integral) and not isinstance(i, bool) and i >= 0 for i in self.stop_token_ids):
            out.append(f"stop_token_ids must be a sequence of token ids >= 0, got {self.stop_token_ids!r}")
        return out

    @classmethod
    def from_generation_config(cls, config: Mapping[str, Any], **overrides: Any) -> SamplingParams:
        """Build from a hub ``generation_config.json`` dict, then apply ``overrides``.

        Keys of ``config`` that are not sampling parameters are ignored (the file may carry other
        settings, e.g. ``eos_token_id``); an unknown name in ``overrides`` is a ``TypeError``.
        """
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in names}
        values.update(overrides)
        return cls(**values)


def _check_int(out: list[str], name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool):
        out.append(f"{name} must be an int, got {value!r}")
    elif value < minimum:
        out.append(f"{name} must be >= {minimum}, got {value}")


def _check_real(out: list[str], name: str, value: Any) -> bool:
    """Record a problem unless ``value`` is a finite number; return whether it is."""
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        out.append(f"{name} must be a finite number, got {value!r}")
        return False
    return True
