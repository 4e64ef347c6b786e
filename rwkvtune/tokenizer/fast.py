"""Optional Rust encoder from the ``pyrwkv-tokenizer`` package (``pip install rwkvtune[fast]``).

It embeds its own copy of ``rwkv_vocab_v20230424.txt``, so it may only stand in for the pure
Python encoder when the loaded vocabulary is that exact one; the tests check that both give
identical ids. Its decoder is not used: it aborts on token sequences that split a UTF-8
character.
"""

from __future__ import annotations

from typing import Protocol


class FastEncoder(Protocol):
    """The part of ``pyrwkv_tokenizer.RWKVTokenizer`` that is used."""

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


def fast_encoder_available() -> bool:
    """Whether ``pyrwkv_tokenizer`` can be imported."""
    try:
        import pyrwkv_tokenizer  # noqa: F401
    except ImportError:
        return False
    return True


def load_fast_encoder() -> FastEncoder:
    """Construct the Rust encoder for the default World vocabulary (ImportError when not installed)."""
    import pyrwkv_tokenizer

    return pyrwkv_tokenizer.RWKVTokenizer()
