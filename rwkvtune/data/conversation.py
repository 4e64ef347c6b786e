"""Turn a conversation into ``(input_ids, labels)`` with loss on the assistant replies only.

Each assistant reply is tokenized on its own, starting right after the generation prompt, so the
model is trained on exactly the token sequence it will see and produce at inference: the prompt
``render(messages[:i], add_generation_prompt=True)`` (ending in ``"Assistant:"``) is context, and the
reply ``render(messages[:i + 1])[len(prompt):]`` (``" {content}\\n\\n"``) is supervised, its turn
terminator "\\n\\n" included, so the model learns to end its turn.

This needs a template whose renderings grow by appending only (each shorter conversation renders
to a prefix of the longer one); a template that rewrites earlier text is rejected with an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from rwkvtune.data.checks import IGNORE_INDEX


class ChatTokenizer(Protocol):
    """What this module needs from a tokenizer (``WorldTokenizer`` has it)."""

    def encode(self, text: str) -> list[int]: ...

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, tokenize: bool = False,
        chat_template: str | None = None, **kwargs: Any,
    ) -> str | list[int]: ...


def encode_conversation(
    messages: Any,
    *,
    tokenizer: ChatTokenizer,
    row: int,
    field: str = "messages",
    first_supervised: int = 0,
    chat_template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids ``[T]`` and aligned labels ``[T]`` of one conversation.

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]``.
        tokenizer: renders with its chat template and encodes.
        row: dataset row index, for error messages.
        field: dataset column the messages came from, for error messages.
        first_supervised: assistant messages before this index are context, not targets (for
            conversational prompt/completion rows, where the prompt may hold earlier replies).
        chat_template: template source; ``None`` uses the tokenizer's.
        template_kwargs: extra template variables (e.g. ``{"enable_thinking": True}``).

    Returns:
        ``(input_ids, labels)``: labels are the reply ids on assistant replies, -100 elsewhere.
        Messages after the last supervised reply are left out (they would carry no loss).

    Raises:
        ValueError: malformed messages or a template that is not incremental; names the row.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(f"row {row}: field {field!r} must be a list of messages, got {type(messages).__name__}")
    kwargs = dict(template_kwargs or {})

    def render(upto: int, add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages[:upto], add_generation_prompt=add_generation_prompt, chat_template=chat_template, **kwargs
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"row {row}: field {field!r}: {exc}") from exc

    render(len(messages), False)  # validates every message, including those after the last reply
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""  # text already tokenized
    for index, message in enumerate(messages):
        if index < first_supervised or message.get("role") != "assistant":
            continue
        prompt = render(index, True)
        full = render(index + 1, False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ValueError(
                f"row {row}: field {field!r}: the chat template is not incremental at message {index}: "
                "rendering the conversation up to this reply does not extend the rendering before it "
                "(with the generation prompt), so the reply cannot be masked on its own"
            )
        context = tokenizer.encode(prompt[len(rendered):])
        reply = tokenizer.encode(full[len(prompt):])
        input_ids += context + reply
        labels += [IGNORE_INDEX] * len(context) + reply
        rendered = full
    return input_ids, labels
