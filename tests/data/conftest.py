"""One World tokenizer for every data test (building its trie is the slow part)."""

from __future__ import annotations

import pytest

from rwkvtune.tokenizer import WorldTokenizer


@pytest.fixture(scope="session")
def tok() -> WorldTokenizer:
    return WorldTokenizer.default(backend="python")
