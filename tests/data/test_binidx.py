"""binidx: the on-disk layout, round trips, windows equal to text packing, and corrupt files."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from rwkvtune.data import BinidxFile, BinidxWindows, prepare_examples, write_binidx
from rwkvtune.data.binidx import MAGIC

DOCS = [[5, 6, 7, 0], [8, 0], [65535, 1, 2, 3, 4, 0]]


def test_layout_on_disk(tmp_path):
    write_binidx(tmp_path / "corpus", DOCS)
    idx = (tmp_path / "corpus.idx").read_bytes()
    assert idx[:9] == MAGIC
    version, code, num_seqs, num_doc_idx = struct.unpack_from("<QBQQ", idx, 9)
    assert (version, code, num_seqs, num_doc_idx) == (1, 8, 3, 4)
    body = idx[34:]
    assert np.frombuffer(body[:12], "<i4").tolist() == [4, 2, 6]                     # sizes
    assert np.frombuffer(body[12:36], "<i8").tolist() == [0, 8, 12]                  # byte pointers (uint16)
    assert np.frombuffer(body[36:], "<i8").tolist() == [0, 1, 2, 3]                  # doc_idx
    assert np.frombuffer((tmp_path / "corpus.bin").read_bytes(), "<u2").tolist() == sum(DOCS, [])
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_round_trip(tmp_path, dtype):
    docs = [np.array(d) for d in DOCS] if dtype is np.uint16 else DOCS + [[70000, 0]]
    written = write_binidx(str(tmp_path / "data.v1"), iter(docs), dtype=dtype)  # a prefix with a dot
    reread = BinidxFile(tmp_path / "data.v1")
    for f in (written, reread):
        assert f.dtype == np.dtype(dtype) and len(f) == len(docs)
        assert [f[i].tolist() for i in range(len(f))] == [list(d) for d in docs]
        assert f[-1].tolist() == list(docs[-1])
        assert f.tokens(3, 6).tolist() == [0, 8, 0]
        assert f.num_tokens == sum(len(d) for d in docs)
    assert "sequences=" in repr(reread)


def test_windows_equal_text_packing(tok, tmp_path):
    texts = ["hello world", "Hi there!", "", "A longer document, with more tokens in it than the others."]
    docs = [tok.encode(text) + [0] for text in texts]
    write_binidx(tmp_path / "corpus", docs)
    for ctx_len in (2, 3, 5, 16, 1000):
        windows = BinidxWindows(tmp_path / "corpus", ctx_len, vocab_size=tok.vocab_size)
        packed = prepare_examples([{"text": text} for text in texts], tokenizer=tok, ctx_len=ctx_len)
        assert len(windows) == len(packed) > 0
        assert list(windows) == list(packed)
        assert windows[-1] == packed[-1]
        assert windows.num_tokens == sum(len(d) for d in docs)


def test_windows_check_ids_and_pickle_by_path(tmp_path):
    write_binidx(tmp_path / "c", DOCS)
    windows = BinidxWindows(tmp_path / "c", 4, vocab_size=65530)
    assert windows[0] == {"input_ids": [5, 6, 7, 0], "labels": [5, 6, 7, 0]}
    with pytest.raises(ValueError, match=r"window 1: token 6 is id 65535, outside the vocabulary"):
        windows[1]
    with pytest.raises(IndexError):
        windows[len(windows)]
    clone = pickle.loads(pickle.dumps(windows))
    assert len(pickle.dumps(windows)) < 1000  # the path, not the data
    assert clone[0] == windows[0] and len(clone) == len(windows) == 4


def test_warns_when_documents_do_not_end_with_eod(tmp_path, caplog):
    write_binidx(tmp_path / "c", [[1, 2, 3]])
    BinidxWindows(tmp_path / "c", 4)
    assert "does not end with the end-of-document id 0" in caplog.text


def test_empty_corpus(tmp_path):
    write_binidx(tmp_path / "empty", [])
    assert len(BinidxFile(tmp_path / "empty")) == 0
    assert len(BinidxWindows(tmp_path / "empty", 4)) == 0


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"document 1 position 0: id 70000 does not fit in uint16"):
        write_binidx(tmp_path / "c", [[1], [70000]])
    with pytest.raises(ValueError, match="unsupported binidx token dtype float32"):
        write_binidx(tmp_path / "c", [[1]], dtype=np.float32)
    with pytest.raises(ValueError, match="document 0: expected a flat sequence of integer ids"):
        write_binidx(tmp_path / "c", [[1.5]])


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        BinidxFile(tmp_path / "missing")
    write_binidx(tmp_path / "c", DOCS)
    idx = (tmp_path / "c.idx").read_bytes()

    def corrupt(data: bytes) -> None:
        (tmp_path / "c.idx").write_bytes(data)

    corrupt(b"NOTANIDX!" + idx[9:])
    with pytest.raises(ValueError, match="not a binidx index"):
        BinidxFile(tmp_path / "c")
    corrupt(idx[:17] + bytes([6]) + idx[18:])
    with pytest.raises(ValueError, match="dtype code 6 is not an integer type"):
        BinidxFile(tmp_path / "c")
    corrupt(idx[:-8])
    with pytest.raises(ValueError, match="header describes"):
        BinidxFile(tmp_path / "c")
    corrupt(idx)
    (tmp_path / "c.bin").write_bytes((tmp_path / "c.bin").read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"c\.bin: 22 bytes, but the index describes 12 uint16 tokens"):
        BinidxFile(tmp_path / "c")
