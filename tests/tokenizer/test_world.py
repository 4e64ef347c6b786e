"""WorldTokenizer: ids identical to the reference `rwkv` package, round trips, errors."""

from __future__ import annotations

import ast
import hashlib
import pickle
import random
import sys
from pathlib import Path

import pytest

from rwkvtune.tokenizer import StreamDecoder, WorldTokenizer
from rwkvtune.tokenizer.fast import fast_encoder_available
from rwkvtune.tokenizer.vocab import DEFAULT_VOCAB_DIGEST, DEFAULT_VOCAB_PATH, load_vocab, table_digest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "rwkvtune" / "tokenizer"


@pytest.fixture(scope="module")
def tok() -> WorldTokenizer:
    # Pinned to the pure-Python encoder so it is what these tests check even with the Rust one installed.
    return WorldTokenizer.default(backend="python")


@pytest.fixture(scope="module")
def oracle():
    """The `rwkv` package's own trie tokenizer on the package's own (CRLF) vocab file."""
    rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
    return rwkv_tokenizer.TRIE_TOKENIZER(str(Path(rwkv_tokenizer.__file__).with_name("rwkv_vocab_v20230424.txt")))


def _fixed_corpus() -> list[str]:
    english = (
        "The quick brown fox jumps over the lazy dog. It's 3:45pm -- isn't it? "
        "RWKV-7 \"Goose\" is an RNN with transformer-level performance; e-mail: a.b@example.com.\n"
    )
    code = (
        "import os\n\n\nclass Foo(Bar):\n    def __init__(self, x: int = 0) -> None:\n"
        "        if x >= 10 and not self._y:\n            return {\"k\": [1, 2, 3]}  # comment\n"
        "\t\tpass\n    \n\n\ndef f():\n        return x**2 != y\n"
    )
    return [
        "",
        english,
        english * 5,
        code,
        "人工智能正在改变世界，语言模型的训练需要大量数据。我们今天去公园散步吧！",
        "日本語のテキスト：東京は日本の首都です。カタカナとひらがな、漢字。",
        "한국어 문장입니다. Привет, мир! Γειά σου Κόσμε. مرحبا بالعالم. שלום עולם. हिन्दी",
        "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍🚀 ❤️‍🔥 🇯🇵🇺🇸 1️⃣ family:👩‍👩‍👦",
        "\n" * 50,
        " " * 300,
        "\t" * 40,
        " \n \n\t\t \r\n\r\n\n\n\n   x   \n\n",
        "mixed: Hello世界مرحباПривет😀abc123\u00e9\u0301 e\u0301 \ufeffBOM \u200bzw \u2028ls",
        "User: hi\n\nAssistant: Hello! How can I help?\n\nUser: think\n\nAssistant: <think>\n</think>",
        "".join(chr(i) for i in range(256)),
        "".join(chr(i) for i in range(256))[::-1],
        "\x00\x01\x02 NUL and control \x7f\x80\x9f\xa0\xff",
        "a" * 1000 + "b" * 77,
        "1234567890" * 20 + " 3.14159265358979 1e-9 0xDEADBEEF",
    ]


def _bytes_as_text() -> list[str]:
    # Every byte value as a latin-1 character: alone, and in context on both sides.
    singles = [bytes([i]).decode("latin-1") for i in range(256)]
    return singles + [f"a{c}b {c}{c}\n{c}" for c in singles]


def _random_unicode(rng: random.Random, count: int) -> list[str]:
    ranges = [(0x20, 0x7E), (0x0A, 0x0D), (0xA0, 0x24F), (0x370, 0x4FF), (0x4E00, 0x9FFF),
              (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 60)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


def _token_soup(rng: random.Random, tok: WorldTokenizer, count: int) -> list[str]:
    """Random concatenations of vocab entries: stresses where greedy matches start and stop."""
    pieces = [t.decode("utf-8") for t in (tok.id_to_token(i) for i in range(257, len(tok))) if _is_utf8(t)]
    extra = [" ", "\n", "\n\n", "\t", "  ", ".", "😀", "中文"]
    return ["".join(rng.choice(pieces if rng.random() < 0.8 else extra) for _ in range(rng.randint(1, 30)))
            for _ in range(count)]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def corpus(tok: WorldTokenizer) -> list[str]:
    rng = random.Random(20230424)
    return _fixed_corpus() + _bytes_as_text() + _random_unicode(rng, 300) + _token_soup(rng, tok, 400)


def test_bundled_vocab_file_is_the_lf_copy():
    assert DEFAULT_VOCAB_PATH.parent == PACKAGE_DIR
    assert hashlib.md5(DEFAULT_VOCAB_PATH.read_bytes()).hexdigest() == "dd1946a66e1721abeac49f9c75a1e844"
    assert (PACKAGE_DIR / "LICENSE-vocab.md").is_file()


def test_crlf_vocab_parses_to_the_same_table(oracle):
    rwkv_copy = Path(sys.modules["rwkv.rwkv_tokenizer"].__file__).with_name("rwkv_vocab_v20230424.txt")
    assert b"\r\n" in rwkv_copy.read_bytes()[:100]
    tokens = load_vocab(rwkv_copy)
    assert table_digest(tokens) == DEFAULT_VOCAB_DIGEST
    assert tokens == oracle.idx2token
    assert sorted(tokens) == list(range(1, 65530))


def test_size_and_special_ids(tok):
    assert tok.vocab_size == 65536
    assert len(tok) == 65530
    assert tok.eos_token_id == 0
    assert tok.decode([0]) == ""
    assert tok.decode([0, 24281, 0]) == "User"
    assert tok.id_to_token(1) == b"\x00"
    assert tok.id_to_token(256) == b"\xff"
    assert tok.token_to_id("\n\n") == 261
    assert tok.token_to_id(b"\xf0\x9f") == 3319
    with pytest.raises(ValueError, match="not a token"):
        tok.token_to_id("definitely not one token")


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("\n", [11]), (" ", [33]), (":", [59]), ("<", [61]), (">", [63]), ("\n\n", [261]), ("</", [754]),
        ("User", [24281]), ("System", [40812]), ("think", [35762]), ("Assistant", [5585, 41693]),
        (" <think", [295, 35762]), ("😀", [3319, 153, 129]),
        ("User: hi\n\nAssistant:", [24281, 59, 4571, 261, 5585, 41693, 59]),
    ],
)
def test_known_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_ids_match_reference(tok, oracle, corpus):
    for text in corpus:
        assert tok.encode(text) == oracle.encode(text), repr(text)


def test_ids_match_reference_on_raw_bytes(tok, oracle):
    rng = random.Random(7)
    blobs = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))) for _ in range(100)]
    blobs.append(bytes(range(256)) * 2)
    for blob in blobs:
        assert tok.encode_bytes(blob) == oracle.encodeBytes(blob), blob
        assert tok.decode_bytes(tok.encode_bytes(blob)) == blob


def test_round_trip(tok, corpus):
    for text in corpus:
        assert tok.decode(tok.encode(text)) == text


def test_encode_batch(tok, corpus):
    assert tok.encode_batch(corpus[:50]) == [tok.encode(t) for t in corpus[:50]]
    assert tok.encode_batch([]) == []


def test_encode_rejects_non_str(tok):
    with pytest.raises(TypeError, match="encode_bytes"):
        tok.encode(b"abc")


def test_split_character_decodes_without_crashing(tok):
    assert tok.decode([3319]) == "\ufffd"
    assert tok.decode([3319, 153]) == "\ufffd"
    assert tok.decode([3319, 153, 129]) == "😀"
    assert tok.decode_bytes([3319]) == b"\xf0\x9f"


@pytest.mark.parametrize("bad", [65530, 65535, 70000, -1, "5", None, 1.5])
def test_decode_rejects_ids_outside_vocab(tok, bad):
    with pytest.raises(ValueError, match=f"token id {bad!r}"):
        tok.decode([24281, bad])


def test_stream_decoder_yields_text_exactly(tok):
    text = "Hi 😀👨‍👩‍👧‍👦 中文 日本語 é\n\n🏳️‍🌈 done" * 3
    stream = StreamDecoder(tok)
    pieces = [stream.feed(i) for i in tok.encode(text)]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)  # the emoji's first token alone gives nothing yet


def test_stream_decoder_flushes_incomplete_tail(tok):
    stream = StreamDecoder(tok)
    assert stream.feed([24281, 3319]) == "User"
    assert stream.flush() == "\ufffd"
    assert stream.feed([3319, 153, 129]) == "😀"  # flush started a new stream


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    text = "pickled tokenizers reach DataLoader workers 😀\n\n"
    assert clone.encode(text) == tok.encode(text)
    assert clone.chat_template == tok.chat_template


def _byte_lines() -> list[str]:
    return [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_custom_vocab_greedy_longest_match(tmp_path):
    path = _write(tmp_path, _byte_lines() + ["257 'ab' 2", "258 'abc' 3", "259 'b c' 3", "260 '中' 3"])
    small = WorldTokenizer.from_file(path)
    assert small.backend == "python"
    assert small.vocab_file == path
    assert len(small) == 261 and small.vocab_size == 320
    assert small.encode("abcab c中") == [258, 257, 33, 100, 260]
    assert small.decode([259]) == "b c"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("257 'ab'", "expected '<id> <literal> <byte_length>'"),
        ("257 'ab' two", "must be integers"),
        ("x 'ab' 2", "must be integers"),
        ("0 'ab' 2", "start at 1"),
        ("257 'ab 2", "cannot parse"),
        ("257 __import__('os').system('echo pwned') 1", "cannot parse"),
        ("257 123 3", "str or bytes"),
        ("257 'abc' 2", "is 3 bytes but the line says 2"),
        ("257 '' 0", "empty token"),
        ("256 'ab' 2", "duplicate token id 256"),
        ("257 b'a' 1", "already has id 98"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, _byte_lines() + [line])
    with pytest.raises(ValueError, match=message) as info:
        WorldTokenizer.from_file(path)
    assert f"{path}:257:" in str(info.value)


def test_vocab_without_all_bytes_is_rejected(tmp_path):
    path = _write(tmp_path, _byte_lines()[:200])
    with pytest.raises(ValueError, match="single-byte tokens for 56 byte") as info:
        WorldTokenizer.from_file(path)
    assert str(path) in str(info.value)


def test_missing_vocab_file(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match="nope"):
        WorldTokenizer.from_file(missing)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        WorldTokenizer({b: bytes([b - 1]) for b in range(1, 257)}, backend="rust")  # type: ignore[arg-type]


@pytest.mark.skipif(fast_encoder_available(), reason="pyrwkv-tokenizer is installed")
def test_fast_backend_requires_the_package():
    with pytest.raises(ImportError, match="rwkvtune\\[fast\\]"):
        WorldTokenizer.default(backend="fast")


@pytest.mark.skipif(not fast_encoder_available(), reason="pyrwkv-tokenizer is not installed")
def test_fast_backend_gives_identical_ids(tok, corpus, tmp_path):
    fast = WorldTokenizer.default(backend="fast")
    assert fast.backend == "fast"
    assert WorldTokenizer.default().backend == "fast"
    for text in corpus:
        assert fast.encode(text) == tok.encode(text), repr(text)
    assert fast.encode_batch(corpus) == tok.encode_batch(corpus)
    assert pickle.loads(pickle.dumps(fast)).encode("hi 😀") == tok.encode("hi 😀")
    custom = _write(tmp_path, _byte_lines())
    assert WorldTokenizer.from_file(custom).backend == "python"
    with pytest.raises(ValueError, match="bundled"):
        WorldTokenizer.from_file(custom, backend="fast")


def test_tokenizer_layer_imports_no_torch():
    # Layer 1 of the package: only the stdlib, jinja2, rwkvtune.config and itself.
    allowed = set(sys.stdlib_module_names) | {"jinja2", "rwkvtune", "pyrwkv_tokenizer"}
    for source in PACKAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{source.name} imports {name}"
                if name.startswith("rwkvtune."):
                    assert name.split(".")[1] in ("tokenizer", "config"), f"{source.name} imports {name}"


def test_stream_decoder_gives_padding_ids_no_text():
    from rwkvtune.tokenizer import StreamDecoder

    tokenizer = WorldTokenizer.default()
    stream = StreamDecoder(tokenizer)
    assert stream.feed([65534] + tokenizer.encode("ok")) + stream.flush() == "ok"  # an untrained model's sample
