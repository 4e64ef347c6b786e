"""Stop strings and stop ids on scripted models whose completions are known; streaming and chat."""

from __future__ import annotations

import pytest

from generation_fakes import scripted_model
from rwkvtune.generation import SamplingParams, chat, generate, stream_text
from rwkvtune.generation.stopping import CompletionText

GREEDY = dict(temperature=0, max_new_tokens=20)


def test_stop_string_across_tokens_cuts_the_text_but_keeps_the_token(tokenizer):
    # "Hello" | " world" | "," ...: the stop "o wo" starts in one token and ends in the next.
    model = scripted_model(tokenizer, "Hi Hello world, this is")
    completion = generate(model, ["Hi"], SamplingParams(stop=("o wo",), **GREEDY), tokenizer)[0]
    assert completion.text == " Hell" and completion.finish_reason == "stop"
    assert tokenizer.decode(completion.token_ids) == " Hello world"  # the completing token is kept


def test_default_stop_on_newlines_split_over_two_tokens(tokenizer):
    model = scripted_model(tokenizer, "Q Fine!\n", default="\n")  # "\n" then "\n" forever: "\n\n" across tokens
    completion = generate(model, ["Q"], SamplingParams(**GREEDY), tokenizer)[0]
    assert completion.text == " Fine!" and completion.finish_reason == "stop"
    assert tokenizer.decode(completion.token_ids) == " Fine!\n\n"


def test_stop_id_is_kept_without_text_and_earliest_stop_wins(tokenizer):
    model = scripted_model(tokenizer, "A B C D", default="x")
    stop_id = tokenizer.encode(" C")[0]
    completion = generate(model, ["A"], SamplingParams(stop=(" D",), stop_token_ids=(stop_id,), **GREEDY),
                          tokenizer)[0]
    assert completion.text == " B" and completion.token_ids == tokenizer.encode(" B C")
    earliest = generate(model, ["A"], SamplingParams(stop=(" D", "B"), stop_token_ids=(), **GREEDY), tokenizer)[0]
    assert earliest.text == " " and earliest.finish_reason == "stop"


def test_max_new_tokens_and_length_finish(tokenizer):
    model = scripted_model(tokenizer, "A B C D", default="x")
    completion = generate(model, ["A"], SamplingParams(temperature=0, max_new_tokens=2, stop=("D",)), tokenizer)[0]
    assert completion.text == " B C" and completion.finish_reason == "length" and len(completion.token_ids) == 2


def test_rows_finish_independently_and_leave_the_batch(tokenizer):
    model = scripted_model(tokenizer, "1 one\n\n", "2 two three four five\n\n")
    params = SamplingParams(temperature=0, max_new_tokens=10, n=2, seed=0)
    completions = generate(model, ["1", "2"], params, tokenizer)
    assert [c.text for c in completions] == [" one", " one", " two three four five", " two three four five"]
    # 5 tokens for the long rows: 4 steps; the "one" rows leave after their 2nd token ("\n\n").
    assert model.step_batch_sizes == [4, 2, 2, 2]


def test_split_utf8_character_is_decoded_whole(tokenizer):
    model = scripted_model(tokenizer, "Smile: 😀!", default="\n")
    completion = generate(model, ["Smile"], SamplingParams(**GREEDY), tokenizer)[0]
    assert completion.text == ": 😀!"


def test_stream_pieces_add_up_and_never_show_the_stop(tokenizer):
    model = scripted_model(tokenizer, "Q Fine!\n", default="\n")
    pieces = list(stream_text(model, "Q", SamplingParams(**GREEDY), tokenizer))
    assert "".join(pieces) == " Fine!" and all("\n" not in p for p in pieces) and len(pieces) >= 2


def test_chat_applies_the_template_and_returns_the_reply(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    last = tokenizer.decode(tokenizer.encode(prompt)[-1:])
    model = scripted_model(tokenizer, f"{last} Hello there!\n\n")
    reply = chat(model, [{"role": "user", "content": "Hi"}], tokenizer, SamplingParams(**GREEDY))
    assert reply == "Hello there!"
    with pytest.raises(ValueError, match="one reply"):
        chat(model, [{"role": "user", "content": "Hi"}], tokenizer, SamplingParams(n=2))


@pytest.mark.parametrize("pieces,stop,expected,held", [
    (["ab", "c\n", "\nd"], ("\n\n",), "abc", "abc"),
    (["x", "EN", "D", "y"], ("END",), "x", "x"),
    (["aa", "ab"], ("aab",), "a", "a"),
])
def test_completion_text_rules(tokenizer, pieces, stop, expected, held):
    text = CompletionText(tokenizer, stop, frozenset())
    settled = []
    for piece in pieces:
        for token in tokenizer.encode(piece):
            if text.add(token):
                break
        settled.append(text.settled_text())
        if text.stopped:
            break
    assert text.finish() == expected and settled[-1] == held
    assert all(expected.startswith(s) for s in settled)
