"""Incremental detokenisation for streaming generation."""

from __future__ import annotations

import codecs
import numbers
from collections.abc import Iterable
from typing import Protocol


class _DecodesBytes(Protocol):
    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...


class StreamDecoder:
    """Turn token ids into text as they arrive, never emitting half of a UTF-8 character.

    A token boundary can split a multi-byte character (the emoji U+1F600 is ids
    [3319, 153, 129]), so decoding each token on its own would print replacement characters.
    Bytes are fed through an incremental UTF-8 decoder that holds back an incomplete tail
    until the rest arrives; the concatenated output of ``feed`` calls plus ``flush`` equals
    ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: _DecodesBytes) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: int | Iterable[int]) -> str:
        """Add one id or several; return the text that is now complete (possibly "")."""
        # numbers.Integral also covers numpy integer scalars.
        if isinstance(ids, numbers.Integral):
            ids = (ids,)
        ids = list(ids)
        try:
            data = self._tokenizer.decode_bytes(ids)
        except ValueError:
            # An id without text: one of the embedding's padding rows (65530..65535 for the World vocab),
            # which an untrained model can sample. It adds no text; its id stays in the completion.
            data = b"".join(self._bytes_or_nothing(i) for i in ids)
        return self._decoder.decode(data)

    def _bytes_or_nothing(self, token_id: int) -> bytes:
        try:
            return self._tokenizer.decode_bytes([token_id])
        except ValueError:
            return b""

    def flush(self) -> str:
        """End the stream: return what is left (an incomplete tail becomes U+FFFD) and reset."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

    def reset(self) -> None:
        """Drop any buffered bytes and start a new stream."""
        self._decoder.reset()
