"""The RWKV "World" tokenizer and chat format (stdlib + jinja2 only; no torch)."""

from rwkvtune.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from rwkvtune.tokenizer.stream import StreamDecoder
from rwkvtune.tokenizer.world import WorldTokenizer

__all__ = ["DEFAULT_CHAT_TEMPLATE", "StreamDecoder", "WorldTokenizer", "render_chat"]
