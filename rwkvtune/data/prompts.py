"""Prompt rows for GRPO: the tokens to sample from, what reward functions see as the prompt, and every
other column (passed to the reward functions by name, as TRL does).

A row gives its prompt as pre-tokenized ``input_ids``, as ``messages`` (rendered with the chat template and
the generation prompt), or as ``prompt``: a string, or a list of messages (TRL's conversational form).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rwkvtune.data.source import open_rows
from rwkvtune.tokenizer import WorldTokenizer

#: Columns that define the prompt (not passed to reward functions as extra columns).
PROMPT_COLUMNS = ("input_ids", "messages", "prompt")
#: Keyword arguments the trainer passes to reward functions itself: no column may take these names.
RESERVED_COLUMNS = ("prompts", "completions", "completion_ids", "trainer_state")


@dataclass(frozen=True)
class PromptRow:
    """One prompt.

    Attributes:
        ids: the tokens sampling starts from (the last ``max_prompt_length``).
        prompt: what reward functions get as the prompt: the text, or the message list of a
            conversational prompt.
        conversational: completions are passed to reward functions as ``[{"role": "assistant", ...}]``.
        columns: every other column of the row.
    """

    ids: list[int]
    prompt: Any
    conversational: bool = False
    columns: dict[str, Any] = field(default_factory=dict)


def prepare_prompts(dataset: Any, *, tokenizer: WorldTokenizer, max_prompt_length: int,
                    vocab_size: int) -> list[PromptRow]:
    """Every row of ``dataset`` as a :class:`PromptRow`; one ``ValueError`` lists the bad rows."""
    source = open_rows(dataset)
    kinds = [name for name in PROMPT_COLUMNS if name in source.column_names]
    if not kinds:
        raise ValueError(f"GRPO rows need a prompt: an input_ids, messages or prompt column; the dataset has "
                         f"{', '.join(source.column_names) or 'no columns'}")
    taken = [name for name in RESERVED_COLUMNS if name in source.column_names]
    if taken:
        raise ValueError(f"GRPO datasets cannot have columns named {', '.join(taken)}: the reward functions get "
                         "those arguments from the trainer; rename them")
    rows: list[PromptRow] = []
    problems: list[str] = []
    for index, row in enumerate(source.iter_rows(source.column_names)):
        try:
            rows.append(_prompt_row(row, tokenizer, max_prompt_length, vocab_size))
        except ValueError as err:
            problems.append(f"row {index}: {err}")
            if len(problems) >= 10:
                break
    if problems:
        raise ValueError("invalid GRPO prompt rows:\n  - " + "\n  - ".join(problems))
    return rows


def _prompt_row(row: Mapping[str, Any], tokenizer: WorldTokenizer, max_prompt_length: int,
                vocab_size: int) -> PromptRow:
    columns = {key: value for key, value in row.items() if key not in PROMPT_COLUMNS}
    prompt, messages, ids = row.get("prompt"), row.get("messages"), row.get("input_ids")
    if isinstance(prompt, Sequence) and not isinstance(prompt, str):
        messages, prompt = prompt, None
    conversational = messages is not None
    if ids is not None:
        ids = [int(i) for i in ids]
        shown = prompt if prompt is not None else messages if conversational else tokenizer.decode(ids)
    elif conversational:
        if not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...}")
        ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        shown = messages
    elif isinstance(prompt, str):
        ids, shown = tokenizer.encode(prompt), prompt
    else:
        raise ValueError(f"no prompt (input_ids, messages or prompt), or a prompt of type {type(prompt).__name__}")
    if not ids:
        raise ValueError("the prompt is empty")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    return PromptRow(ids[-max_prompt_length:], shown, conversational, columns)
