"""Which of the accepted dataset formats a table of columns is, decided from its column names.

Formats (TRL's dataset types plus the seed's pre-tokenized rows):

=====================  ==================================  ==========================================
format                 columns                              loss on
=====================  ==================================  ==========================================
``tokenized``          ``input_ids`` (+ optional ``labels``) ``labels`` (default: every token)
``messages``           ``messages``                         assistant turns, each with its "\\n\\n"
``prompt_completion``  ``prompt`` + ``completion``          the completion
``text``               ``text``                             every token (packed into windows)
=====================  ==================================  ==========================================

Other columns are ignored, so ``Dataset.map(prepare_data)`` output, which keeps the source
columns next to ``input_ids``/``labels``, works as is.
"""

from __future__ import annotations

from collections.abc import Iterable

TOKENIZED = "tokenized"
MESSAGES = "messages"
PROMPT_COMPLETION = "prompt_completion"
TEXT = "text"

# Checked in this order: the first format whose columns are all present wins. Pre-tokenized ids come
# first because a row that already has them was prepared on purpose (the seed README's SFT snippet
# keeps its source text columns beside them).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    TOKENIZED: ("input_ids",),
    MESSAGES: ("messages",),
    PROMPT_COMPLETION: ("prompt", "completion"),
    TEXT: ("text",),
}

FORMATS: tuple[str, ...] = tuple(FORMAT_COLUMNS)


def describe_formats() -> str:
    """One line per format, for error messages: ``tokenized: input_ids (+ labels)`` ..."""
    lines = []
    for name, columns in FORMAT_COLUMNS.items():
        extra = " (+ labels)" if name == TOKENIZED else ""
        lines.append(f"  {name}: {' + '.join(columns)}{extra}")
    return "\n".join(lines)


def detect_format(column_names: Iterable[str]) -> str:
    """The format of a dataset with these columns (precedence: input_ids > messages > prompt+completion > text).

    Raises:
        ValueError: none of the known column sets is present; the message lists the columns found
            and the accepted formats.
    """
    present = set(column_names)
    for name, columns in FORMAT_COLUMNS.items():
        if all(column in present for column in columns):
            return name
    hint = ""
    if "prompt" in present and "completion" not in present:
        hint = "\n'prompt' alone is a prompt-only (GRPO) dataset; SFT needs 'completion' too."
    raise ValueError(
        f"dataset has none of the known columns; it has {sorted(present)}.\n"
        f"Accepted formats (columns):\n{describe_formats()}{hint}"
    )


def check_format(name: str, column_names: Iterable[str]) -> str:
    """Validate a format chosen by the caller against the columns; returns ``name``."""
    if name not in FORMAT_COLUMNS:
        raise ValueError(f"unknown data format {name!r}; expected one of {', '.join(FORMATS)}")
    present = set(column_names)
    missing = [column for column in FORMAT_COLUMNS[name] if column not in present]
    if missing:
        raise ValueError(f"data format {name!r} needs column(s) {missing}; the dataset has {sorted(present)}")
    return name
