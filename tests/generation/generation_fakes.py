"""Helpers for the generation tests: random prompts, and fake models whose output is known."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from checkpoints import tiny_config
from rwkvtune.model import RWKVState
from rwkvtune.tokenizer import WorldTokenizer

#: No stop rule: random models would otherwise stop at a random "\n\n" or id 0.
NO_STOP = dict(stop=(), stop_token_ids=())


def random_prompts(lengths, vocab_size: int = 1000, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab_size, (n,), generator=gen).tolist() for n in lengths]


class ScriptedModel(nn.Module):
    """Predicts ``table[last token]`` with certainty, so the completion of a prompt is known in advance.

    Not an ``RWKV7`` (the engine takes its generic ``forward``/``step`` path); the state is carried but
    unused. ``step_batch_sizes`` records the batch size of every ``step`` call.
    """

    def __init__(self, table: dict[int, int], default: int, vocab_size: int = 65536):
        super().__init__()
        self.config = tiny_config(n_layer=1, n_embd=64, vocab_size=vocab_size, dim_ffn=256)
        next_id = torch.full((vocab_size,), default, dtype=torch.long)
        for source, target in table.items():
            next_id[source] = target
        self.register_buffer("next_id", next_id)
        self.step_batch_sizes: list[int] = []

    def initial_state(self, batch_size: int) -> RWKVState:
        return RWKVState.zeros(self.config, batch_size, device=self.next_id.device)

    def forward(self, input_ids: torch.Tensor, state: RWKVState | None = None, return_state: bool = False):
        logits = 20.0 * F.one_hot(self.next_id[input_ids], self.config.vocab_size).float()  # [B, T, V]
        state = state if state is not None else self.initial_state(input_ids.shape[0])
        return SimpleNamespace(logits=logits, state=state if return_state else None)

    def step(self, token_ids: torch.Tensor, state: RWKVState) -> tuple[torch.Tensor, RWKVState]:
        self.step_batch_sizes.append(token_ids.shape[0])
        return self.forward(token_ids[:, None], state, return_state=True).logits[:, 0], state


def scripted_model(tokenizer: WorldTokenizer, *texts: str, default: str = "x") -> ScriptedModel:
    """A model that continues the first token of each text with the rest of it, token by token.

    The tokens of every text must be distinct across all texts (the next token depends on the last one).
    """
    table: dict[int, int] = {}
    for text in texts:
        ids = tokenizer.encode(text)
        for source, target in zip(ids, ids[1:]):
            assert table.get(source, target) == target, f"token {source} continues two ways"
            table[source] = target
    return ScriptedModel(table, tokenizer.encode(default)[0])


class StepCounter(nn.Module):
    """Wraps an ``RWKV7`` as a generic model (no in-place decode path) and records ``step`` batch sizes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.step_batch_sizes: list[int] = []

    def initial_state(self, batch_size: int) -> RWKVState:
        return self.inner.initial_state(batch_size)

    def forward(self, input_ids, state=None, return_state=False):
        return self.inner(input_ids, state, return_state=return_state)

    def step(self, token_ids, state):
        self.step_batch_sizes.append(token_ids.shape[0])
        return self.inner.step(token_ids, state)
