"""The RWKV chat format: exact rendered strings, normalisation, errors, tokenisation."""

from __future__ import annotations

import pytest

from rwkvtune.tokenizer import DEFAULT_CHAT_TEMPLATE, WorldTokenizer, render_chat
from rwkvtune.tokenizer.chat import CHAT_TEMPLATE_PATH, normalize_content

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


@pytest.fixture(scope="module")
def tok() -> WorldTokenizer:
    return WorldTokenizer.default(backend="python")


def test_default_template_is_the_shipped_file():
    assert CHAT_TEMPLATE_PATH.read_text(encoding="utf-8") == DEFAULT_CHAT_TEMPLATE
    assert CHAT_TEMPLATE_PATH.suffix == ".jinja"


def test_multi_turn_with_system():
    assert render_chat(CONVERSATION) == (
        "System: You are a helpful assistant.\n\n"
        "User: Hi!\n\n"
        "Assistant: Hello! How can I help?\n\n"
        "User: Tell me a joke.\n\n"
    )


def test_generation_prompt_has_no_trailing_space():
    text = render_chat(CONVERSATION[1:2], add_generation_prompt=True)
    assert text == "User: Hi!\n\nAssistant:"


def test_thinking_generation_prompt():
    text = render_chat(CONVERSATION[1:2], add_generation_prompt=True, enable_thinking=True)
    assert text == "User: Hi!\n\nAssistant: <think"
    assert render_chat(CONVERSATION[1:2], add_generation_prompt=True, enable_thinking=False).endswith("Assistant:")


def test_finished_conversation_without_prompt():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert render_chat(messages) == "User: q\n\nAssistant: a\n\n"
    assert render_chat([]) == ""


def test_content_is_normalised():
    messages = [{"role": "user", "content": "  line one\r\nline two\r\n\r\n\n\nline three \n\n"}]
    assert render_chat(messages, add_generation_prompt=True) == (
        "User: line one\nline two\nline three\n\nAssistant:"
    )
    assert normalize_content("\n\n a \n\n\n b \n") == "a \n b"
    assert normalize_content("\r\n") == ""


def test_input_messages_are_not_modified():
    messages = [{"role": "user", "content": "a\n\n\nb", "name": "x"}]
    render_chat(messages)
    assert messages == [{"role": "user", "content": "a\n\n\nb", "name": "x"}]


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([{"role": "user", "content": "ok"}, {"role": "tool", "content": "x"}], ValueError,
         "message 1 has role 'tool'"),
        ([{"content": "no role"}], ValueError, "message 0 has role None"),
        ([{"role": "user", "content": "ok"}, {"role": "assistant"}], ValueError, "message 1 .*no 'content'"),
        ([{"role": "user", "content": 5}], TypeError, "message 0 .*content must be a str"),
        (["User: hi"], TypeError, "message 0 must be a mapping"),
    ],
)
def test_bad_messages_name_the_index(messages, error, match):
    with pytest.raises(error, match=match):
        render_chat(messages)


def test_custom_template_and_variables():
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{{ suffix }}"
    text = render_chat(CONVERSATION[1:3], template=template, suffix="!")
    assert text == "<user>Hi!<assistant>Hello! How can I help?!"


def test_template_errors_become_value_errors():
    with pytest.raises(ValueError, match="invalid chat template"):
        render_chat(CONVERSATION, template="{% for %}")
    with pytest.raises(ValueError, match="only one turn"):
        render_chat(CONVERSATION, template="{{ raise_exception('only one turn') }}")


def test_template_is_sandboxed():
    # Reaching Python internals through attributes is what the sandbox forbids.
    with pytest.raises(ValueError, match="failed to render"):
        render_chat(CONVERSATION, template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(ValueError, match="failed to render"):
        render_chat(CONVERSATION, template="{{ messages.append(1) }}")


def test_apply_chat_template(tok):
    text = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert text == render_chat(CONVERSATION, add_generation_prompt=True)
    ids = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True)
    assert ids == tok.encode(text)
    assert ids[-3:] == [5585, 41693, 59]  # "Assistant:"
    think = tok.apply_chat_template(CONVERSATION[1:2], add_generation_prompt=True, tokenize=True, enable_thinking=True)
    # "User: Hi!\n\nAssistant: <think" with " <think" = [295, 35762] as in the spec.
    assert think == [24281, 59, 3880, 34, 261, 5585, 41693, 59, 295, 35762]


def test_tokenizer_chat_template_attribute():
    tok = WorldTokenizer.default(chat_template="{{ messages | length }}", backend="python")
    assert tok.chat_template == "{{ messages | length }}"
    assert tok.apply_chat_template(CONVERSATION) == "4"
    assert tok.apply_chat_template(CONVERSATION, chat_template="{{ add_generation_prompt }}",
                                   add_generation_prompt=True) == "True"
    assert WorldTokenizer.default(backend="python").chat_template == DEFAULT_CHAT_TEMPLATE
