"""Memory-mapped RWKV-LM / Megatron ``.bin`` + ``.idx`` token files ("binidx"), and windows over them.

Large pretraining corpora are tokenized once into this format (RWKV-LM's ``make_data.py`` and
``json2binidx`` tools, Megatron's ``preprocess_data.py``) and read in place: nothing here loads the
``.bin`` file, each window reads only its own pages.

Format (``MMapIndexedDataset``, all integers little-endian):

``<prefix>.idx``::

    bytes 0-8     magic  b"MMIDIDX\\x00\\x00"
    u64           version, 1
    u8            token dtype code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16
                  (6 and 7 are float types, meaningless for tokens, and rejected)
    u64           S, number of sequences
    u64           D, number of document-index entries (documents + 1)
    i32[S]        sizes: tokens in each sequence
    i64[S]        pointers: byte offset of each sequence in the .bin file
    i64[D]        doc_idx: index of each document's first sequence, then S

``<prefix>.bin``: the tokens of all sequences back to back, in the token dtype.

RWKV-LM writes one sequence per document, each document ending with the end-of-document id 0, and
trains on the ``.bin`` as one continuous token stream; :class:`BinidxWindows` does the same, cutting
it into the overlapping ``ctx_len`` windows of :mod:`rwkvtune.data.packing`. Documents are expected
to already end with id 0 (:func:`write_binidx` writes what it is given and adds nothing).
"""

from __future__ import annotations

import copy
import logging
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rwkvtune.data.packing import check_ctx_len, num_windows, window_bounds

logger = logging.getLogger(__name__)

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type[np.integer]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16,
}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, S, D: 34 bytes


def binidx_paths(path_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<prefix>.bin, <prefix>.idx)``; the suffix is appended, never replaced (prefixes may hold dots)."""
    prefix = os.fspath(path_prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


class BinidxFile:
    """Read-only, memory-mapped view of a ``.bin``/``.idx`` pair.

    ``len()`` and indexing are per sequence (one document each, as RWKV-LM writes them);
    :meth:`tokens` reads a slice of the concatenated stream. Pickles by path, so DataLoader
    workers map the files themselves instead of receiving a copy of the data.

    Raises:
        FileNotFoundError: a file of the pair is missing.
        ValueError: the files are not a consistent binidx pair (message says what is wrong).
    """

    def __init__(self, path_prefix: str | os.PathLike[str]) -> None:
        self.bin_path, self.idx_path = binidx_paths(path_prefix)
        self._open()

    def _open(self) -> None:
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise FileNotFoundError(f"binidx file not found: {path}")
        idx_size = self.idx_path.stat().st_size
        if idx_size < _HEADER.size:
            raise ValueError(f"{self.idx_path}: {idx_size} bytes, too short for a binidx index")
        index = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        magic, version, code, num_seqs, num_doc_idx = _HEADER.unpack(index[:_HEADER.size].tobytes())
        if magic != MAGIC:
            raise ValueError(f"{self.idx_path}: not a binidx index (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise ValueError(f"{self.idx_path}: binidx version {version}, only {VERSION} is supported")
        if code not in DTYPE_CODES:
            raise ValueError(f"{self.idx_path}: token dtype code {code} is not an integer type "
                             f"(supported: {sorted(DTYPE_CODES)})")
        expected = _HEADER.size + 12 * num_seqs + 8 * num_doc_idx
        if idx_size != expected:
            raise ValueError(f"{self.idx_path}: {idx_size} bytes, but its header describes {expected}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        # Views into the mapped index (the offsets need not be aligned; numpy handles that).
        self.sizes = np.frombuffer(index, dtype="<i4", count=num_seqs, offset=_HEADER.size)              # [S]
        self.pointers = np.frombuffer(index, dtype="<i8", count=num_seqs, offset=_HEADER.size + 4 * num_seqs)  # [S]
        self.doc_idx = np.frombuffer(index, dtype="<i8", count=num_doc_idx,
                                     offset=_HEADER.size + 12 * num_seqs)                                 # [D]
        self._starts = np.zeros(num_seqs + 1, dtype=np.int64)  # token offset of each sequence, then the total
        np.cumsum(self.sizes, out=self._starts[1:])
        # The stream view needs sequences back to back from byte 0, as every known writer lays them out.
        if not np.array_equal(self.pointers, self._starts[:-1] * self.dtype.itemsize):
            raise ValueError(f"{self.idx_path}: sequences are not stored back to back in the .bin file")
        self.num_tokens = int(self._starts[-1])
        bin_size = self.bin_path.stat().st_size
        if bin_size != self.num_tokens * self.dtype.itemsize:
            raise ValueError(f"{self.bin_path}: {bin_size} bytes, but the index describes {self.num_tokens} "
                             f"{self.dtype.name} tokens ({self.num_tokens * self.dtype.itemsize} bytes)")
        # np.memmap refuses empty files.
        self._stream = (np.memmap(self.bin_path, dtype=self.dtype.newbyteorder("<"), mode="r")
                        if self.num_tokens else np.zeros(0, dtype=self.dtype))

    def __len__(self) -> int:
        """Number of sequences (documents, for files written by RWKV-LM's tools or :func:`write_binidx`)."""
        return len(self.sizes)

    def __getitem__(self, index: int) -> np.ndarray:
        """Tokens ``[sizes[index]]`` of one sequence (a copy; the file stays closed to writes)."""
        index = range(len(self))[index]
        return self.tokens(int(self._starts[index]), int(self._starts[index + 1]))

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[stop - start]`` of the concatenated stream, read from the mapped file."""
        return np.array(self._stream[start:stop])

    def __getstate__(self) -> dict[str, Any]:
        return {"bin_path": self.bin_path, "idx_path": self.idx_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.bin_path, self.idx_path = state["bin_path"], state["idx_path"]
        self._open()

    def __repr__(self) -> str:
        prefix = str(self.bin_path)[:-len(".bin")]
        return f"BinidxFile({prefix!r}, sequences={len(self)}, tokens={self.num_tokens}, dtype={self.dtype.name})"


class BinidxWindows(Sequence[dict[str, list[int]]]):
    """The token stream of a binidx pair as overlapping ``ctx_len`` windows ``{"input_ids", "labels"}``.

    The same windows :func:`~rwkvtune.data.prepare_examples` packs from ``text`` rows (labels equal
    the ids; the loss shifts them), read on demand from the mapped file.

    Args:
        path_prefix: the path without ``.bin`` / ``.idx``.
        ctx_len: tokens per window (>= 2); ``None`` leaves it to the trainer, which uses its config's
            ``ctx_len`` (:meth:`with_ctx_len`).
        vocab_size: when given, each window read is checked to hold ids below it (ValueError naming
            the window and token offset otherwise).
    """

    def __init__(self, path_prefix: str | os.PathLike[str], ctx_len: int | None = None, *,
                 vocab_size: int | None = None) -> None:
        self.file = BinidxFile(path_prefix)
        self.ctx_len = None if ctx_len is None else check_ctx_len(ctx_len)
        self.vocab_size = vocab_size
        total = self.file.num_tokens
        if total and int(self.file.tokens(total - 1, total)[0]) != 0:
            logger.warning("%s does not end with the end-of-document id 0; RWKV-LM's tools end every document "
                           "with it, and training learns document ends from it", self.file.bin_path)

    def with_ctx_len(self, ctx_len: int, *, vocab_size: int | None = None) -> BinidxWindows:
        """The same corpus in windows of ``ctx_len`` tokens (the file stays mapped once); ``vocab_size``
        replaces the checked vocabulary size when given."""
        windows = copy.copy(self)
        windows.ctx_len = check_ctx_len(ctx_len)
        windows.vocab_size = vocab_size if vocab_size is not None else self.vocab_size
        return windows

    def _window_length(self) -> int:
        if self.ctx_len is None:
            raise ValueError("this BinidxWindows has no ctx_len: pass ctx_len=..., or give it to a trainer, which "
                             "uses its config's ctx_len")
        return self.ctx_len

    def __len__(self) -> int:
        return num_windows(self.file.num_tokens, self._window_length())

    def __getitem__(self, index: int) -> dict[str, list[int]]:  # type: ignore[override]
        start, stop = window_bounds(index, self.file.num_tokens, self._window_length())
        window = self.file.tokens(start, stop)
        if self.vocab_size is not None:
            bad = (window < 0) | (window >= self.vocab_size)
            if bad.any():
                position = int(bad.argmax())
                raise ValueError(f"{self.file.bin_path}: window {index}: token {start + position} is id "
                                 f"{int(window[position])}, outside the vocabulary (0 .. {self.vocab_size - 1})")
        ids = window.tolist()
        return {"input_ids": ids, "labels": list(ids)}

    @property
    def num_tokens(self) -> int:
        """Tokens in the stream."""
        return self.file.num_tokens


def write_binidx(
    path_prefix: str | os.PathLike[str],
    documents: Iterable[Sequence[int] | np.ndarray],
    *,
    dtype: type[np.integer] | np.dtype = np.uint16,
) -> BinidxFile:
    """Write documents as a binidx pair (one sequence per document) and open it.

    Documents are written as given: end each with id 0 for RWKV-style pretraining data. The files
    are written under temporary names and renamed at the end, so an interrupted write never leaves
    a pair that looks complete.

    Args:
        path_prefix: output path without ``.bin`` / ``.idx``.
        documents: token ids per document, streamed (never all held in memory).
        dtype: token dtype; uint16 holds ids < 65536 (the World vocab), int32 anything larger.

    Raises:
        ValueError: an unsupported dtype, or a document with an id the dtype cannot hold (named by
            document index and position).
    """
    dtype = np.dtype(dtype)
    codes = {np.dtype(t): code for code, t in DTYPE_CODES.items()}
    if dtype not in codes:
        raise ValueError(f"unsupported binidx token dtype {dtype}; use one of {sorted(str(d) for d in codes)}")
    info = np.iinfo(dtype)
    bin_path, idx_path = binidx_paths(path_prefix)
    bin_tmp, idx_tmp = bin_path.with_name(bin_path.name + ".tmp"), idx_path.with_name(idx_path.name + ".tmp")
    sizes: list[int] = []
    with open(bin_tmp, "wb") as out:
        for doc_index, document in enumerate(documents):
            tokens = np.asarray(document)
            if tokens.ndim != 1 or (tokens.size and tokens.dtype.kind not in "iu"):
                raise ValueError(f"document {doc_index}: expected a flat sequence of integer ids")
            bad = (tokens < info.min) | (tokens > info.max)
            if bad.any():
                position = int(bad.argmax())
                raise ValueError(f"document {doc_index} position {position}: id {int(tokens[position])} does not fit "
                                 f"in {dtype.name} ({info.min} .. {info.max}); pass dtype=np.int32")
            if len(tokens) >= 2**31:
                raise ValueError(f"document {doc_index}: {len(tokens)} tokens, more than an index entry holds")
            out.write(tokens.astype(dtype.newbyteorder("<"), copy=False).tobytes())
            sizes.append(len(tokens))
    size_array = np.asarray(sizes, dtype="<i4")                                   # [S]
    pointers = np.zeros(len(sizes), dtype="<i8")                                  # [S]
    np.cumsum(size_array[:-1], out=pointers[1:])
    pointers *= dtype.itemsize
    doc_idx = np.arange(len(sizes) + 1, dtype="<i8")                              # [D]: one sequence per document
    with open(idx_tmp, "wb") as out:
        out.write(_HEADER.pack(MAGIC, VERSION, codes[dtype], len(sizes), len(doc_idx)))
        out.write(size_array.tobytes())
        out.write(pointers.tobytes())
        out.write(doc_idx.tobytes())
    os.replace(bin_tmp, bin_path)
    os.replace(idx_tmp, idx_path)
    logger.info("wrote %s: %d documents, %d tokens", bin_path, len(sizes), int(size_array.sum()))
    return BinidxFile(path_prefix)
