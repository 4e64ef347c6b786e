"""Format detection from column names."""

from __future__ import annotations

import pytest

from rwkvtune.data import FORMATS, detect_format
from rwkvtune.data.formats import check_format


@pytest.mark.parametrize(("columns", "expected"), [
    (["input_ids"], "tokenized"),
    (["input_ids", "labels"], "tokenized"),
    (["instruction", "output", "input_ids", "labels"], "tokenized"),  # the seed README's map() output
    (["prompt", "input_ids"], "tokenized"),
    (["messages", "text"], "messages"),
    (["prompt", "completion", "text"], "prompt_completion"),
    (["text", "id"], "text"),
])
def test_detect(columns, expected):
    assert detect_format(columns) == expected


def test_unknown_columns_list_what_is_there_and_what_is_accepted():
    with pytest.raises(ValueError, match=r"none of the known columns.*\['answer', 'question'\]") as info:
        detect_format(["question", "answer"])
    for name in FORMATS:
        assert name in str(info.value)


def test_prompt_alone_is_explained():
    with pytest.raises(ValueError, match="'completion' too"):
        detect_format(["prompt"])


def test_forced_format_is_checked():
    assert check_format("text", ["text", "input_ids"]) == "text"
    with pytest.raises(ValueError, match=r"needs column\(s\) \['completion'\]"):
        check_format("prompt_completion", ["prompt"])
    with pytest.raises(ValueError, match="unknown data format 'chat'"):
        check_format("chat", ["messages"])
