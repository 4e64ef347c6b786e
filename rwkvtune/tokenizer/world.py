"""``WorldTokenizer``: the RWKV "World" tokenizer (greedy longest match over UTF-8 bytes)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from rwkvtune.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from rwkvtune.tokenizer.fast import FastEncoder, fast_encoder_available, load_fast_encoder
from rwkvtune.tokenizer.trie import GreedyEncoder
from rwkvtune.tokenizer.vocab import DEFAULT_VOCAB_DIGEST, DEFAULT_VOCAB_PATH, load_vocab, table_digest

Backend = Literal["auto", "python", "fast"]

# Embedding rows are padded to a multiple of this (65530 ids -> 65536 rows for the World vocab).
_ROW_MULTIPLE = 64


class WorldTokenizer:
    """Tokenizer for RWKV World models.

    Encoding takes, at each position of the text's UTF-8 bytes, the longest vocabulary entry
    that matches; there is no normalisation or pre-tokenisation, and it never fails because
    every single byte is a token. Id 0 is not in the vocab file: it marks the end of a
    document and decodes to nothing.

    Build one with :meth:`default` (bundled ``rwkv_vocab_v20230424.txt``) or :meth:`from_file`.
    Loading takes a fraction of a second; the encoder trie is built on first use.

    Args:
        tokens: ``{id: token_bytes}`` with ids >= 1.
        chat_template: jinja2 chat template; ``None`` selects :data:`DEFAULT_CHAT_TEMPLATE`.
        backend: "python" (pure Python), "fast" (``pyrwkv-tokenizer``; only for the bundled
            vocabulary) or "auto" (fast when installed and applicable). Ids are identical.
        vocab_file: the file ``tokens`` came from, kept so the vocab can be copied when saving.
    """

    eos_token_id: int = 0

    def __init__(
        self,
        tokens: Mapping[int, bytes],
        *,
        chat_template: str | None = None,
        backend: Backend = "auto",
        vocab_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self._by_id = _id_table(tokens)
        self._by_bytes = {token: token_id for token_id, token in tokens.items()}
        if len(self._by_bytes) != len(tokens):
            raise ValueError("two token ids share the same bytes")
        # Checked now rather than on the first encode: without every single byte some texts
        # could not be encoded at all.
        missing = [b for b in range(256) if bytes([b]) not in self._by_bytes]
        if missing:
            shown = ", ".join(f"0x{b:02x}" for b in missing[:8])
            source = vocab_file or "vocabulary"
            raise ValueError(f"{source} lacks single-byte tokens for {len(missing)} byte(s): {shown}")
        self.chat_template: str = DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template
        self.vocab_file: Path | None = None if vocab_file is None else Path(vocab_file)
        self._use_fast = _resolve_backend(backend, tokens)
        # Built on first use, so loading a tokenizer only to decode stays cheap.
        self._greedy: GreedyEncoder | None = None
        self._fast: FastEncoder | None = None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], chat_template: str | None = None, backend: Backend = "auto"
    ) -> WorldTokenizer:
        """Load a ``rwkv_vocab_v20230424.txt``-format file (see :func:`~rwkvtune.tokenizer.vocab.load_vocab`)."""
        return cls(load_vocab(path), chat_template=chat_template, backend=backend, vocab_file=path)

    @classmethod
    def default(cls, chat_template: str | None = None, backend: Backend = "auto") -> WorldTokenizer:
        """The World tokenizer with the vocabulary bundled in this package."""
        return cls.from_file(DEFAULT_VOCAB_PATH, chat_template=chat_template, backend=backend)

    @property
    def backend(self) -> Literal["python", "fast"]:
        """The encoder actually in use."""
        return "fast" if self._use_fast else "python"

    @property
    def vocab_size(self) -> int:
        """Embedding rows a model needs: ``len(self)`` rounded up to a multiple of 64 (65536).

        Ids from ``len(self)`` up are padding rows that encoding never produces.
        """
        return -(-len(self._by_id) // _ROW_MULTIPLE) * _ROW_MULTIPLE

    def __len__(self) -> int:
        """Number of ids that decode: 0 (end of document) up to the largest vocab id (65530)."""
        return len(self._by_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (UnicodeEncodeError for lone surrogates, which have no UTF-8)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}; use encode_bytes() for bytes")
        if self._use_fast:
            return self._fast_encoder().encode(text)
        return self._python_encoder().encode(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of raw bytes (any bytes, valid UTF-8 or not)."""
        return self._python_encoder().encode(bytes(data))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``."""
        if self._use_fast:
            texts = list(texts)
            for index, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"encode_batch() takes strs, item {index} is {type(text).__name__}")
            return self._fast_encoder().encode_batch(texts)
        return [self.encode(text) for text in texts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids``; ValueError naming the first id that is not in the vocab."""
        ids = ids if isinstance(ids, list) else list(ids)
        table = self._by_id
        try:
            # Negative ids would silently index from the end of the table.
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            raise self._unknown_id_error(ids) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 (e.g. a split character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> bytes:
        """Bytes of one id (b"" for 0)."""
        return self.decode_bytes([token_id])

    def token_to_id(self, token: str | bytes) -> int:
        """Id of a vocabulary entry given as text (UTF-8) or bytes; ValueError if it is not one."""
        key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        try:
            return self._by_bytes[key]
        except KeyError:
            raise ValueError(f"{token!r} is not a token of this vocabulary") from None

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render ``messages`` with ``chat_template`` (default: ``self.chat_template``).

        Returns the prompt string, or its ids when ``tokenize`` is true. Extra keyword arguments
        become template variables (e.g. ``enable_thinking=True``); see :func:`render_chat`.
        """
        template = self.chat_template if chat_template is None else chat_template
        text = render_chat(messages, template=template, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return f"WorldTokenizer(vocab_file={self.vocab_file}, size={len(self)}, backend={self.backend!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The Rust encoder cannot be pickled and the trie is cheaper to rebuild than to pickle
        # (DataLoader workers started with "spawn" receive the tokenizer this way).
        state = self.__dict__.copy()
        state["_greedy"] = None
        state["_fast"] = None
        return state

    def _python_encoder(self) -> GreedyEncoder:
        if self._greedy is None:
            self._greedy = GreedyEncoder(self._by_bytes)
        return self._greedy

    def _fast_encoder(self) -> FastEncoder:
        if self._fast is None:
            self._fast = load_fast_encoder()
        return self._fast

    def _unknown_id_error(self, ids: list[Any]) -> ValueError:
        table = self._by_id
        for position, token_id in enumerate(ids):
            valid = isinstance(token_id, int) or hasattr(token_id, "__index__")
            if not valid or not 0 <= token_id < len(table) or table[token_id] is None:
                return ValueError(
                    f"token id {token_id!r} (position {position}) is not in the vocabulary "
                    f"(ids 0..{len(table) - 1})"
                )
        return ValueError("token ids could not be decoded")


def _id_table(tokens: Mapping[int, bytes]) -> list[bytes | None]:
    """List indexed by id; index 0 (end of document) is b"", ids missing from the file are None."""
    if not tokens:
        raise ValueError("empty vocabulary")
    table: list[bytes | None] = [None] * (max(tokens) + 1)
    for token_id, token in tokens.items():
        if not isinstance(token_id, int) or token_id < 1:
            raise ValueError(f"token ids must be integers >= 1 (0 is end of document), got {token_id!r}")
        if not isinstance(token, bytes) or not token:
            raise ValueError(f"token {token_id} must be non-empty bytes, got {token!r}")
        table[token_id] = token
    table[0] = b""
    return table


def _resolve_backend(backend: Backend, tokens: Mapping[int, bytes]) -> bool:
    """Whether to encode with pyrwkv-tokenizer."""
    if backend == "python":
        return False
    if backend not in ("auto", "fast"):
        raise ValueError(f"backend must be 'auto', 'python' or 'fast', got {backend!r}")
    if not fast_encoder_available():
        if backend == "fast":
            raise ImportError("backend='fast' needs pyrwkv-tokenizer: pip install 'rwkvtune[fast]'")
        return False
    # The Rust encoder carries its own vocabulary, so it only applies to the bundled one.
    if table_digest(tokens) != DEFAULT_VOCAB_DIGEST:
        if backend == "fast":
            raise ValueError("backend='fast' only supports the bundled rwkv_vocab_v20230424 vocabulary")
        return False
    return True
