"""Render conversations in the RWKV chat format with a (sandboxed) jinja2 template."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHAT_TEMPLATE_PATH = Path(__file__).with_name("rwkv_chat_template.jinja")
DEFAULT_CHAT_TEMPLATE: str = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")

ROLES = ("system", "user", "assistant")

_BLANK_LINES = re.compile(r"\n{2,}")


def normalize_content(text: str) -> str:
    """Make message text safe for the format: CRLF -> LF, blank lines removed, stripped.

    "\\n\\n" ends a turn in RWKV pre-training data, so a blank line inside a message would
    read as the end of that message.
    """
    return _BLANK_LINES.sub("\n", text.replace("\r\n", "\n")).strip()


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    template: str | None = None,
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> str:
    """Render ``[{"role": ..., "content": ...}, ...]`` to a prompt string.

    Args:
        messages: roles "system", "user" or "assistant"; content is normalised with
            :func:`normalize_content` first, so templates stay plain jinja.
        template: jinja2 source; defaults to :data:`DEFAULT_CHAT_TEMPLATE`.
        add_generation_prompt: end with the assistant prefix so the model writes the reply.
        **kwargs: extra template variables, e.g. ``enable_thinking=True``.

    Raises:
        ValueError: a message with an unknown role or no content, or a template that fails to
            compile or render. Errors about a message name its index.
        TypeError: a message that is not a mapping, or content that is not a str.
    """
    cleaned = [_clean_message(i, m) for i, m in enumerate(messages)]
    compiled = _compile(DEFAULT_CHAT_TEMPLATE if template is None else template)
    try:
        return compiled.render(messages=cleaned, add_generation_prompt=add_generation_prompt, **kwargs)
    except TemplateError as exc:
        raise ValueError(f"chat template failed to render: {exc}") from exc


def _clean_message(index: int, message: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one message and return a copy with normalised content (other keys kept)."""
    if not isinstance(message, Mapping):
        raise TypeError(f"message {index} must be a mapping with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"message {index} has role {role!r}; expected one of {', '.join(ROLES)}")
    content = message.get("content")
    if content is None:
        raise ValueError(f"message {index} ({role}) has no 'content'")
    if not isinstance(content, str):
        raise TypeError(f"message {index} ({role}) content must be a str, got {type(content).__name__}")
    return {**message, "content": normalize_content(content)}


def _raise_exception(message: str) -> NoReturn:
    """Exposed to templates as ``raise_exception`` (templates written for transformers call it)."""
    raise TemplateError(message)


# Templates come from downloaded files, hence the sandbox: no attribute access to internals
# and no mutation of the objects passed in.
# The same settings as transformers' chat templates, so templates written for it render the same here.
_ENV = ImmutableSandboxedEnvironment(autoescape=False, trim_blocks=True, lstrip_blocks=True,
                                     extensions=["jinja2.ext.loopcontrols"])
_ENV.globals["raise_exception"] = _raise_exception


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> Template:
    """Compile once per distinct template source (compiling costs far more than rendering)."""
    try:
        return _ENV.from_string(source)
    except TemplateError as exc:
        raise ValueError(f"invalid chat template: {exc}") from exc
