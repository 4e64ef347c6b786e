"""Reading "RWKV World" vocabulary files (`rwkv_vocab_v20230424.txt` format).

Each line is ``<id> <literal> <byte_length>``: the id and length are separated from the
literal by the *first* and *last* space, because the literal itself may contain spaces.
The literal is a Python ``str`` literal (stored as its UTF-8 bytes) or a ``bytes`` literal
(for byte sequences that are not valid UTF-8).
"""

from __future__ import annotations

import ast
import errno
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_VOCAB_PATH = Path(__file__).with_name("rwkv_vocab_v20230424.txt")

# table_digest() of the bundled vocabulary; lets callers recognise it whatever the file's
# line endings or location (e.g. to know that an external encoder built on it agrees).
DEFAULT_VOCAB_DIGEST = "e8e7025bfbfa9c6e071fa66e7539d655133c2cfabe9b1a9c72a98e2114b35dc5"


def load_vocab(path: str | os.PathLike[str]) -> dict[int, bytes]:
    """Parse a vocab file into ``{id: token_bytes}``.

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ValueError: a malformed line (message ``<path>:<line>: <reason>``) or a duplicate id
            or token.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "vocab file not found", str(path))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason})") from None

    tokens: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    # Split on "\n" only: str.splitlines() would also break on characters such as U+2028.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        token_id, token = _parse_line(line, path, lineno)
        if token_id in tokens:
            raise ValueError(f"{path}:{lineno}: duplicate token id {token_id}")
        if token in seen:
            raise ValueError(f"{path}:{lineno}: token {token!r} already has id {seen[token]}")
        tokens[token_id] = token
        seen[token] = token_id
    return tokens


def _parse_line(line: str, path: Path, lineno: int) -> tuple[int, bytes]:
    """Parse one non-blank line; every failure names the file and line."""
    first, last = line.find(" "), line.rfind(" ")
    if first <= 0 or first == last:
        raise ValueError(f"{path}:{lineno}: expected '<id> <literal> <byte_length>', got {line[:80]!r}")
    id_field, literal, length_field = line[:first], line[first + 1 : last], line[last + 1 :]
    try:
        token_id = int(id_field)
        length = int(length_field)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: id and byte length must be integers, got {line[:80]!r}") from None
    if token_id < 1:
        # Id 0 is reserved for end-of-document; it has no bytes and is not in the file.
        raise ValueError(f"{path}:{lineno}: token ids start at 1, got {token_id}")
    token = _parse_literal(literal, path, lineno)
    if len(token) != length:
        raise ValueError(f"{path}:{lineno}: token {token!r} is {len(token)} bytes but the line says {length}")
    if not token:
        raise ValueError(f"{path}:{lineno}: empty token")
    return token_id, token


def _parse_literal(literal: str, path: Path, lineno: int) -> bytes:
    """Evaluate a str/bytes literal safely (never ``eval``: vocab files come from the internet)."""
    quote = literal[:1]
    if (
        quote in ("'", '"')
        and len(literal) >= 2
        and literal[-1] == quote
        and "\\" not in literal
        and quote not in literal[1:-1]
    ):
        # A plain quoted string without escapes is its own content; this covers most lines and
        # makes loading several times faster than running literal_eval on every one.
        return literal[1:-1].encode("utf-8")
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{path}:{lineno}: cannot parse token literal {literal[:80]!r}") from None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path}:{lineno}: token literal {literal[:80]!r} is not encodable as UTF-8") from None
    if isinstance(value, bytes):
        return value
    raise ValueError(f"{path}:{lineno}: token literal must be a str or bytes literal, got {literal[:80]!r}")


def table_digest(tokens: Mapping[int, bytes]) -> str:
    """SHA-256 over the (id, bytes) pairs in id order: equal digests mean identical vocabularies."""
    h = hashlib.sha256()
    for token_id in sorted(tokens):
        token = tokens[token_id]
        h.update(b"%d %d " % (token_id, len(token)))
        h.update(token)
    return h.hexdigest()
