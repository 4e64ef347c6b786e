"""Preference pairs for DPO: a prompt, the answer preferred (``chosen``) and the one not (``rejected``).

Three row forms, TRL's column names:

- ``prompt``, ``chosen``, ``rejected`` strings: each tokenized on its own (as SFT's prompt/completion rows),
  so that an answer is a token sequence that continues the prompt's state. No end token is appended (TRL
  1.16 appends EOS): an answer ends with what it holds, e.g. the chat format's "\n\n";
- conversational: ``prompt`` a list of messages, ``chosen`` and ``rejected`` lists of (assistant) messages,
  rendered with the chat template (the prompt ending in the generation prompt, each answer what the template
  adds after it up to its last assistant message, turn terminator included: what SFT trains on);
- pre-tokenized: ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``.

Truncation is that of TRL before 1.0 (1.16 cuts prompt + answer to ``max_length`` instead): a prompt keeps
its last ``max_prompt_length`` tokens, an answer its first ``max_completion_length``. A row that cannot be
read (a missing column, an empty prompt or answer) is an error naming it; a pair whose two answers are the
same tokens (after truncation) holds no preference and is left out, with a warning naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rwkvtune.data.checks import as_token_ids
from rwkvtune.data.conversation import encode_conversation
from rwkvtune.data.source import open_rows
from rwkvtune.tokenizer import WorldTokenizer

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
TOKEN_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")


@dataclass(frozen=True)
class PreferencePair:
    """One pair's tokens: the prompt, read once, and the two answers that continue it."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def num_tokens(self) -> int:
        """Tokens the model reads for this pair (the prompt once)."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def prepare_preferences(dataset: Any, *, tokenizer: WorldTokenizer, vocab_size: int, max_prompt_length: int | None,
                        max_completion_length: int | None) -> list[PreferencePair]:
    """Every row of ``dataset`` as a :class:`PreferencePair`; one ``ValueError`` lists the bad rows."""
    source = open_rows(dataset)
    columns = set(source.column_names)
    if set(TOKEN_COLUMNS) <= columns:
        wanted = TOKEN_COLUMNS
    elif set(TEXT_COLUMNS) <= columns:
        wanted = TEXT_COLUMNS
    else:
        raise ValueError(
            f"DPO rows need prompt, chosen and rejected columns (strings, or message lists), or prompt_input_ids, "
            f"chosen_input_ids and rejected_input_ids; the dataset has {', '.join(source.column_names) or 'none'} "
            f"(missing: {', '.join(c for c in TEXT_COLUMNS if c not in columns)})")
    pairs: list[PreferencePair] = []
    problems: list[str] = []
    truncated_prompts = 0
    same: list[int] = []
    for index, row in enumerate(source.iter_rows(wanted)):
        try:
            prompt, chosen, rejected = (_tokens(row, index, tokenizer, vocab_size) if wanted == TEXT_COLUMNS
                                        else (as_token_ids(row[c], row=index, field=c, vocab_size=vocab_size).tolist()
                                              for c in TOKEN_COLUMNS))
            pair = _truncated(prompt, chosen, rejected, max_prompt_length, max_completion_length, index)
        except ValueError as err:
            problems.append(str(err))
            if len(problems) >= 10:
                break
            continue
        truncated_prompts += len(pair.prompt_ids) < len(prompt)
        if pair.chosen_ids == pair.rejected_ids:
            same.append(index)
        else:
            pairs.append(pair)
    if problems:
        raise ValueError("invalid DPO rows:\n  - " + "\n  - ".join(problems))
    if same:
        cut = f" in their first max_completion_length={max_completion_length} tokens" \
            if max_completion_length is not None else ""
        logger.warning("left out %d of %d pairs whose chosen and rejected answers are the same%s (they hold no "
                       "preference): rows %s", len(same), len(same) + len(pairs), cut,
                       ", ".join(map(str, same[:10])) + (" ..." if len(same) > 10 else ""))
    if not pairs:
        raise ValueError("no DPO pair is left: every row's chosen and rejected answers are the same")
    if truncated_prompts:
        logger.warning("%d of %d prompts were longer than max_prompt_length=%d tokens and kept their last %d tokens "
                       "(TRL's truncation)", truncated_prompts, len(pairs), max_prompt_length, max_prompt_length)
    return pairs


def _tokens(row: Mapping[str, Any], index: int, tokenizer: WorldTokenizer,
            vocab_size: int) -> tuple[list[int], list[int], list[int]]:
    """``(prompt, chosen, rejected)`` token ids of a text or conversational row."""
    prompt, chosen, rejected = (row[c] for c in TEXT_COLUMNS)
    for name, value in zip(TEXT_COLUMNS, (prompt, chosen, rejected)):
        if value is None:
            raise ValueError(f"row {index}: {name!r} is missing (None)")
    if all(isinstance(v, str) for v in (prompt, chosen, rejected)):
        ids = [tokenizer.encode(v) for v in (prompt, chosen, rejected)]
    elif all(_is_message_list(v) for v in (prompt, chosen, rejected)):
        ids = _conversational(list(prompt), list(chosen), list(rejected), index, tokenizer)
    else:
        raise ValueError(f"row {index}: prompt, chosen and rejected must all be strings or all be lists of messages, "
                         f"got {', '.join(type(v).__name__ for v in (prompt, chosen, rejected))}")
    for name, values in zip(TEXT_COLUMNS, ids):
        if values and max(values) >= vocab_size:
            raise ValueError(f"row {index}: {name!r} encodes to ids outside the model's vocabulary of {vocab_size}")
    return ids[0], ids[1], ids[2]


def _conversational(prompt: list, chosen: list, rejected: list, index: int,
                    tokenizer: WorldTokenizer) -> list[list[int]]:
    """The prompt rendered up to the generation prompt, and each answer as the tokens the template adds."""
    answers = []
    prompt_ids = None
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer:
            raise ValueError(f"row {index}: {name!r} is an empty list of messages")
        ids, labels = encode_conversation(prompt + answer, tokenizer=tokenizer, row=index, field=f"prompt+{name}",
                                          first_supervised=len(prompt))
        supervised = [i for i, label in enumerate(labels) if label != -100]
        if not supervised:
            raise ValueError(f"row {index}: {name!r} holds no assistant message")
        start = supervised[0]
        if prompt_ids is not None and ids[:start] != prompt_ids:
            raise ValueError(f"row {index}: the prompt renders differently before chosen and before rejected")
        prompt_ids = ids[:start]
        answers.append(ids[start:])
    return [prompt_ids, *answers]


def _truncated(prompt: list[int], chosen: list[int], rejected: list[int], max_prompt_length: int | None,
               max_completion_length: int | None, index: int) -> PreferencePair:
    if not prompt:
        raise ValueError(f"row {index}: the prompt is empty (its last token predicts each answer's first token)")
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        if not ids:
            raise ValueError(f"row {index}: {name!r} is empty: a pair compares two non-empty answers")
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    if max_completion_length is not None:
        chosen, rejected = chosen[:max_completion_length], rejected[:max_completion_length]
    return PreferencePair(prompt, chosen, rejected)


def _is_message_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and \
        all(isinstance(m, Mapping) for m in value)
