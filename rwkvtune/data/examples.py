"""``prepare_examples``: any accepted dataset -> ``PreparedData`` of ``{"input_ids", "labels"}`` rows.

Labels are aligned with ``input_ids`` (same length, -100 where there is no loss) as in HF
transformers; the loss shifts them (position ``t`` predicts ``labels[t + 1]``). Per format:

* ``tokenized``: rows pass through after validation; missing ``labels`` means every token is a target.
* ``text``: each text is tokenized, the end-of-document id 0 appended, and the concatenated stream
  cut into ``ctx_len`` windows overlapping by one token (:mod:`rwkvtune.data.packing`).
* ``prompt_completion``: prompt and completion are tokenized separately (the prompt exactly as it
  will be at inference) and concatenated; loss on the completion. Conversational rows (both lists
  of messages) are rendered like ``messages``, with loss on the completion's assistant replies.
  Nothing is appended to a plain completion: if the model should learn to stop, end it with the
  stop text (e.g. "\\n\\n" for the chat format).
* ``messages``: rendered with the chat template; loss on each assistant reply and its "\\n\\n"
  terminator (:mod:`rwkvtune.data.conversation`).

Rows longer than ``ctx_len`` keep their first ``ctx_len`` tokens; rows left without a target are
dropped. Both are counted in :class:`PrepareStats` and in one warning each, never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rwkvtune.data.checks import IGNORE_INDEX, as_labels, as_token_ids
from rwkvtune.data.conversation import encode_conversation
from rwkvtune.data.formats import MESSAGES, PROMPT_COMPLETION, TEXT, TOKENIZED, check_format, detect_format
from rwkvtune.data.packing import check_ctx_len, num_windows, window_bounds
from rwkvtune.data.prepared import PreparedData, PrepareStats
from rwkvtune.data.source import open_rows
from rwkvtune.tokenizer import WorldTokenizer

logger = logging.getLogger(__name__)

END_OF_DOCUMENT = 0
"""Id appended to every document of pretraining text (RWKV World: id 0 is end of document)."""

WORLD_VOCAB_SIZE = 65536
"""Embedding rows of RWKV World models; the id bound for pre-tokenized data when no tokenizer is given."""

_SHOWN_ROWS = 5  # row indices quoted in a warning


def prepare_examples(
    dataset: Any,
    *,
    tokenizer: WorldTokenizer | None = None,
    ctx_len: int,
    chat_template: str | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    data_format: str | None = None,
) -> PreparedData:
    """Validate, tokenize, mask and truncate (or pack) a dataset into training examples.

    Args:
        dataset: a ``datasets.Dataset``, a ``datasets.IterableDataset`` (read into memory) or a
            list of dicts, in one of the formats of :mod:`rwkvtune.data.formats`.
        tokenizer: needed by every format except ``tokenized``.
        ctx_len: longest example in tokens (>= 2); the window length for ``text``.
        chat_template: template for conversations (``messages``, conversational prompt/completion);
            ``None`` uses the tokenizer's (the hub's).
        chat_template_kwargs: extra template variables, e.g. ``{"enable_thinking": True}``.
        vocab_size: ids must be below this; default ``tokenizer.vocab_size``, else 65536. Pass the
            model's vocab size when it differs.
        data_format: force a format instead of detecting it from the columns.

    Returns:
        :class:`PreparedData`, in dataset order (``text``: stream order), with ``.stats``.

    Raises:
        ValueError: empty dataset, unknown columns, a missing tokenizer, a malformed row (the
            message names the row index and field), or no example left after dropping.
    """
    ctx_len = check_ctx_len(ctx_len)
    source = open_rows(dataset)
    if data_format is None:
        fmt = detect_format(source.column_names)
    else:
        fmt = check_format(data_format, source.column_names)
    if tokenizer is None and fmt != TOKENIZED:
        raise ValueError(f"the {fmt!r} format needs a tokenizer (pass tokenizer=...)")
    if vocab_size is None:
        vocab_size = tokenizer.vocab_size if tokenizer is not None else WORLD_VOCAB_SIZE

    if fmt == TEXT:
        texts = (_text(row["text"], index) for index, row in enumerate(source.iter_rows(["text"])))
        prepared = _pack_stream((tokenizer.encode(text) + [END_OF_DOCUMENT] for text in texts),
                                rows_in=source.num_rows, ctx_len=ctx_len)
    else:
        builder = _ExampleBuilder(fmt, ctx_len)
        if fmt == TOKENIZED:
            columns = ["input_ids", "labels"] if "labels" in source.column_names else ["input_ids"]
            for index, row in enumerate(source.iter_rows(columns)):
                builder.add(index, *_tokenized(row, index, vocab_size))
        elif fmt == PROMPT_COMPLETION:
            for index, row in enumerate(source.iter_rows(["prompt", "completion"])):
                builder.add(index, *_prompt_completion(row, index, tokenizer, chat_template, chat_template_kwargs))
        elif fmt == MESSAGES:
            for index, row in enumerate(source.iter_rows(["messages"])):
                builder.add(index, *encode_conversation(
                    row["messages"], tokenizer=tokenizer, row=index, chat_template=chat_template,
                    template_kwargs=chat_template_kwargs))
        prepared = builder.finish(rows_in=source.num_rows)
    s = prepared.stats
    logger.info("prepared %d %s examples from %d rows: %d tokens, %d supervised (ctx_len %d)",
                s.rows_out, s.format, s.rows_in, s.tokens, s.supervised_tokens, ctx_len)
    return prepared


def _tokenized(row: Mapping[str, Any], index: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(input_ids, labels)`` of a pre-tokenized row; no labels -> every token is a target."""
    input_ids = as_token_ids(row["input_ids"], row=index, field="input_ids", vocab_size=vocab_size)
    if row.get("labels") is None:
        return input_ids, input_ids
    labels = as_labels(row["labels"], row=index, vocab_size=vocab_size, length=len(input_ids))
    return input_ids, labels


def _prompt_completion(
    row: Mapping[str, Any], index: int, tokenizer: WorldTokenizer, chat_template: str | None,
    template_kwargs: Mapping[str, Any] | None,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a prompt/completion row: two strings, or two lists of messages."""
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt_ids = tokenizer.encode(prompt)
        completion_ids = tokenizer.encode(completion)
        return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    if _is_message_list(prompt) and _is_message_list(completion):
        return encode_conversation(list(prompt) + list(completion), tokenizer=tokenizer, row=index,
                                   field="prompt+completion", first_supervised=len(prompt),
                                   chat_template=chat_template, template_kwargs=template_kwargs)
    for field, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise ValueError(f"row {index}: field {field!r} is missing (None)")
    raise ValueError(
        f"row {index}: fields 'prompt' and 'completion' must both be strings or both be lists of messages, "
        f"got {type(prompt).__name__} and {type(completion).__name__}"
    )


def _is_message_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _text(value: Any, index: int) -> str:
    if not isinstance(value, str):
        got = "missing (None)" if value is None else f"a {type(value).__name__}, not a str"
        raise ValueError(f"row {index}: field 'text' is {got}")
    return value


class _ExampleBuilder:
    """Collects one example per row: truncates to ``ctx_len``, drops rows without a target, counts both."""

    def __init__(self, fmt: str, ctx_len: int) -> None:
        self.fmt = fmt
        self.ctx_len = ctx_len
        self.input_ids: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.truncated: list[int] = []
        self.dropped: list[int] = []

    def add(self, row: int, input_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        if len(input_ids) > self.ctx_len:
            self.truncated.append(row)
            input_ids, labels = input_ids[:self.ctx_len], labels[:self.ctx_len]
        labels = np.asarray(labels, dtype=np.int32)
        # Position 0 is never a target (nothing before it predicts it), hence labels[1:].
        if len(labels) < 2 or not (labels[1:] != IGNORE_INDEX).any():
            self.dropped.append(row)
            return
        self.input_ids.append(np.asarray(input_ids, dtype=np.int32))
        self.labels.append(labels)

    def finish(self, *, rows_in: int) -> PreparedData:
        if self.truncated:
            logger.warning("%d of %d rows were longer than ctx_len=%d tokens and were truncated to their first %d "
                           "tokens (rows %s)", len(self.truncated), rows_in, self.ctx_len, self.ctx_len,
                           _quote(self.truncated))
        if self.dropped:
            logger.warning("%d of %d rows had no target token left (all labels -100 after position 0, or fewer "
                           "than 2 tokens) and were dropped (rows %s)", len(self.dropped), rows_in,
                           _quote(self.dropped))
        if not self.input_ids:
            raise ValueError(f"no training example left: all {rows_in} rows were dropped for having no target "
                             "token (check the labels / the assistant turns, and ctx_len)")
        lengths = [len(ids) for ids in self.input_ids]
        labels = np.concatenate(self.labels)
        stats = PrepareStats(format=self.fmt, rows_in=rows_in, rows_out=len(lengths), truncated=len(self.truncated),
                             dropped=len(self.dropped), tokens=int(sum(lengths)),
                             supervised_tokens=sum(int((lab[1:] != IGNORE_INDEX).sum()) for lab in self.labels),
                             ctx_len=self.ctx_len)
        return PreparedData(np.concatenate(self.input_ids), labels, _offsets(lengths), stats)


def _pack_stream(documents: Any, *, rows_in: int, ctx_len: int) -> PreparedData:
    """Concatenate the documents and cut the stream into overlapping ``ctx_len`` windows (labels = ids)."""
    stream = np.concatenate([np.asarray(doc, dtype=np.int32) for doc in documents])
    count = num_windows(len(stream), ctx_len)
    if count == 0:
        raise ValueError(f"no training example left: the {rows_in} texts give {len(stream)} token(s), "
                         "and a window needs at least 2")
    bounds = [window_bounds(index, len(stream), ctx_len) for index in range(count)]
    input_ids = np.concatenate([stream[start:stop] for start, stop in bounds])
    lengths = [stop - start for start, stop in bounds]
    stats = PrepareStats(format=TEXT, rows_in=rows_in, rows_out=count, truncated=0, dropped=0,
                         tokens=len(input_ids), supervised_tokens=len(stream) - 1, ctx_len=ctx_len)
    return PreparedData(input_ids, input_ids, _offsets(lengths), stats)


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    """``[len(lengths) + 1]`` start of each example in the flat arrays, then the total."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _quote(rows: list[int]) -> str:
    shown = ", ".join(str(row) for row in rows[:_SHOWN_ROWS])
    return shown + (f", ... {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else "")
