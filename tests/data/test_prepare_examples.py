"""prepare_examples: each format with exact ids/labels, truncation and drops, and the errors."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pytest

from rwkvtune.data import IGNORE_INDEX, prepare_examples

X = IGNORE_INDEX
USER_HI = [24281, 59, 4571, 261, 5585, 41693, 59]  # "User: hi\n\nAssistant:"
HELLO = [36786, 261]                               # " Hello\n\n"
LOGGER = "rwkvtune.data.examples"


def rows_of(prepared):
    return [(row["input_ids"], row["labels"]) for row in prepared]


# --- tokenized ----------------------------------------------------------------------------------------

def test_seed_readme_sft_rows_pass_through_unchanged(tok):
    def prepare_data(example):  # the seed README's snippet, as written there
        prompt = f"User: {example['instruction']}\n\nAssistant: "
        completion = example["output"]
        prompt_ids = tok.encode(prompt)
        completion_ids = tok.encode(completion)
        input_ids = prompt_ids + completion_ids
        labels = [-100] * len(prompt_ids) + completion_ids
        return {"input_ids": input_ids, "labels": labels}

    source = [{"instruction": "What is 2+2?", "output": "4"}, {"instruction": "Say hi", "output": "Hi there!"}]
    dataset = datasets.Dataset.from_list(source).map(prepare_data)
    prepared = prepare_examples(dataset, tokenizer=tok, ctx_len=64)
    assert rows_of(prepared) == [(r["input_ids"], r["labels"]) for r in dataset]
    s = prepared.stats
    assert (s.format, s.rows_in, s.rows_out, s.truncated, s.dropped) == ("tokenized", 2, 2, 0, 0)
    assert s.supervised_tokens == len(tok.encode("4")) + len(tok.encode("Hi there!"))


def test_pretrain_rows_and_missing_labels(caplog):
    dataset = datasets.Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5]}])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        prepared = prepare_examples(dataset, tokenizer=None, ctx_len=8)
    assert rows_of(prepared) == [([1, 2, 3], [1, 2, 3]), ([4, 5], [4, 5])]  # labels None -> input_ids
    assert prepared.stats.tokens == 5 and prepared.stats.supervised_tokens == 3
    assert "prepared 2 tokenized examples from 2 rows" in caplog.text


def test_numpy_rows_and_vocab_size_override():
    prepared = prepare_examples([{"input_ids": np.array([1, 99], dtype=np.uint16)}], ctx_len=4, vocab_size=100)
    assert prepared[0] == {"input_ids": [1, 99], "labels": [1, 99]}
    with pytest.raises(ValueError, match=r"row 0: field 'input_ids' position 1 holds id 99, outside the vocabulary "
                                         r"\(0 \.\. 98\)"):
        prepare_examples([{"input_ids": [1, 99]}], ctx_len=4, vocab_size=99)


# --- text ----------------------------------------------------------------------------------------------

def test_text_is_packed_into_overlapping_windows(tok):
    assert tok.encode("hello world") == [34550, 40213] and tok.encode("Hi there!") == [1097, 39934, 34]
    prepared = prepare_examples(datasets.Dataset.from_list([{"text": "hello world"}, {"text": "Hi there!"}]),
                                tokenizer=tok, ctx_len=3)
    # stream: hello world <eod> Hi there ! <eod> -> windows of 3 overlapping by 1; labels = ids
    assert rows_of(prepared) == [
        ([34550, 40213, 0], [34550, 40213, 0]),
        ([0, 1097, 39934], [0, 1097, 39934]),
        ([39934, 34, 0], [39934, 34, 0]),
    ]
    s = prepared.stats
    assert (s.format, s.rows_in, s.rows_out, s.tokens, s.supervised_tokens) == ("text", 2, 3, 9, 6)


def test_text_last_window_is_short(tok):
    prepared = prepare_examples([{"text": "hello world"}, {"text": "Hi there!"}], tokenizer=tok, ctx_len=5)
    assert [row["input_ids"] for row in prepared] == [[34550, 40213, 0, 1097, 39934], [39934, 34, 0]]
    assert prepared.lengths.tolist() == [5, 3]


# --- prompt + completion -------------------------------------------------------------------------------

def test_prompt_completion_strings_are_tokenized_separately(tok):
    prepared = prepare_examples([{"prompt": "User: hi\n\nAssistant:", "completion": " Hello\n\n"}],
                                tokenizer=tok, ctx_len=32)
    assert rows_of(prepared) == [(USER_HI + HELLO, [X] * 7 + HELLO)]


def test_prompt_completion_conversational_matches_messages(tok):
    user = [{"role": "user", "content": "hi"}]
    reply = [{"role": "assistant", "content": "Hello"}]
    conversational = prepare_examples([{"prompt": user, "completion": reply}], tokenizer=tok, ctx_len=32)
    assert rows_of(conversational) == [(USER_HI + HELLO, [X] * 7 + HELLO)]


def test_prompt_completion_replies_inside_the_prompt_are_context(tok):
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "bye"}]
    completion = [{"role": "assistant", "content": "Bye"}]
    ids, labels = rows_of(prepare_examples([{"prompt": prompt, "completion": completion}], tokenizer=tok,
                                           ctx_len=64))[0]
    context = tok.encode("User: hi\n\nAssistant: Hello\n\nUser: bye\n\nAssistant:")
    assert ids == context + tok.encode(" Bye\n\n")
    assert labels == [X] * len(context) + tok.encode(" Bye\n\n")


# --- messages ------------------------------------------------------------------------------------------

def test_messages_single_turn_exact_ids(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    prepared = prepare_examples(datasets.Dataset.from_list([{"messages": messages}]), tokenizer=tok, ctx_len=32)
    assert rows_of(prepared) == [(USER_HI + HELLO, [X] * 7 + HELLO)]
    assert prepared.stats.supervised_tokens == 2


def test_messages_multi_turn_loss_on_each_reply_with_its_terminator(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue,\n\nor red."},  # blank line collapsed by the template
        {"role": "user", "content": "thanks"},  # after the last reply: no loss, left out
    ]
    ids, labels = rows_of(prepare_examples([{"messages": messages}], tokenizer=tok, ctx_len=128))[0]
    segments = [
        (tok.encode("System: Be brief.\n\nUser: hi\n\nAssistant:"), False),
        (tok.encode(" Hello\n\n"), True),
        (tok.encode("User: Name a colour.\n\nAssistant:"), False),
        (tok.encode(" Blue,\nor red.\n\n"), True),
    ]
    assert ids == [t for seg, _ in segments for t in seg]
    assert labels == [t if sup else X for seg, sup in segments for t in seg]
    assert tok.decode(ids) == tok.apply_chat_template(messages[:5])
    # each supervised span ends with "\n\n" (id 261)
    assert [labels[i] for i in range(len(labels) - 1) if labels[i] != X and labels[i + 1] == X] == [261]
    assert labels[-1] == 261


def test_messages_template_kwargs_reach_the_template(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>ok</think> 4"}]
    ids, labels = rows_of(prepare_examples([{"messages": messages}], tokenizer=tok, ctx_len=64,
                                           chat_template_kwargs={"enable_thinking": True}))[0]
    prompt = tok.encode("User: hi\n\nAssistant: <think")
    assert ids == prompt + tok.encode(">ok</think> 4\n\n")
    assert labels[:len(prompt)] == [X] * len(prompt)


def test_messages_custom_template(tok):
    template = ("{% for m in messages %}{{ m.role }}> {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant>{% endif %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    ids, labels = rows_of(prepare_examples([{"messages": messages}], tokenizer=tok, ctx_len=64,
                                           chat_template=template))[0]
    assert tok.decode(ids) == "user> hi\nassistant> Hello\n"
    assert tok.decode([t for t in labels if t != X]) == " Hello\n"


def test_non_incremental_template_names_the_row(tok):
    template = ("{{ messages | length }}|{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    good = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match=r"row 1: field 'messages': the chat template is not incremental at message 1"):
        prepare_examples([{"messages": good[:1]}, {"messages": good}], tokenizer=tok, ctx_len=64,
                         chat_template=template)


# --- truncation and drops ------------------------------------------------------------------------------

def test_truncation_is_counted_and_logged(caplog):
    rows = [{"input_ids": list(range(1, 11))}, {"input_ids": [1, 2, 3]}, {"input_ids": list(range(1, 7)),
                                                                          "labels": [X, X, 3, 4, 5, 6]}]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prepared = prepare_examples(rows, ctx_len=4)
    assert rows_of(prepared) == [([1, 2, 3, 4], [1, 2, 3, 4]), ([1, 2, 3], [1, 2, 3]), ([1, 2, 3, 4], [X, X, 3, 4])]
    assert prepared.stats.truncated == 2 and prepared.stats.dropped == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 3 rows were longer than ctx_len=4" in warnings[0]
    assert "rows 0, 2" in warnings[0]


def test_rows_without_a_target_are_dropped_and_counted(tok, caplog):
    rows = [
        {"input_ids": [1, 2, 3], "labels": [X, X, X]},        # nothing supervised
        {"input_ids": [5]},                                    # one token: nothing to predict
        {"input_ids": [1, 2, 3], "labels": [1, X, X]},        # position 0 is never a target
        {"input_ids": [1, 2, 3, 4, 5], "labels": [X, X, X, X, 5]},  # the target is truncated away
        {"input_ids": [7, 8], "labels": [X, 8]},
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prepared = prepare_examples(datasets.Dataset.from_list(rows), ctx_len=4)
    assert rows_of(prepared) == [([7, 8], [X, 8])]
    s = prepared.stats
    assert (s.rows_in, s.rows_out, s.dropped, s.truncated, s.supervised_tokens) == (5, 1, 4, 1, 1)
    assert "4 of 5 rows had no target token left" in caplog.text and "rows 0, 1, 2, 3" in caplog.text


def test_messages_without_an_assistant_turn_are_dropped(tok):
    rows = [{"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]}]
    prepared = prepare_examples(rows, tokenizer=tok, ctx_len=32)
    assert len(prepared) == 1 and prepared.stats.dropped == 1


def test_all_rows_dropped_is_an_error():
    with pytest.raises(ValueError, match="no training example left: all 2 rows were dropped"):
        prepare_examples([{"input_ids": [1]}, {"input_ids": [1, 2], "labels": [X, X]}], ctx_len=4)


# --- containers and determinism ------------------------------------------------------------------------

def test_iterable_dataset_and_list_give_the_same_examples(tok):
    rows = [{"prompt": "User: hi\n\nAssistant:", "completion": " Hello\n\n"},
            {"prompt": "Q:", "completion": " A"}]
    from_generator = datasets.IterableDataset.from_generator(lambda: iter(rows))  # column_names is None
    assert from_generator.column_names is None
    results = [rows_of(prepare_examples(source, tokenizer=tok, ctx_len=16)) for source in
               (rows, datasets.Dataset.from_list(rows), datasets.Dataset.from_list(rows).to_iterable_dataset(),
                from_generator)]
    assert all(result == results[0] for result in results)
    assert results[0][0] == (USER_HI + HELLO, [X] * 7 + HELLO)


def test_prepared_data_indexing():
    prepared = prepare_examples([{"input_ids": [1, 2]}, {"input_ids": [3, 4, 5]}], ctx_len=8)
    assert prepared[-1] == prepared[1] == {"input_ids": [3, 4, 5], "labels": [3, 4, 5]}
    assert prepared[np.int64(0)]["input_ids"] == [1, 2]
    with pytest.raises(IndexError):
        prepared[2]
    assert "examples=2" in repr(prepared)


# --- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("empty", [[], datasets.Dataset.from_list([]), datasets.Dataset.from_dict({"text": []})])
def test_empty_dataset(empty, tok):
    with pytest.raises(ValueError, match="the dataset is empty"):
        prepare_examples(empty, tokenizer=tok, ctx_len=8)


def test_unknown_columns(tok):
    with pytest.raises(ValueError, match=r"none of the known columns; it has \['answer', 'question'\]"):
        prepare_examples([{"question": "q", "answer": "a"}], tokenizer=tok, ctx_len=8)


def test_not_a_dataset():
    with pytest.raises(TypeError, match="list of dicts, got str"):
        prepare_examples("data.jsonl", ctx_len=8)
    with pytest.raises(TypeError, match="row 1 is a list"):
        prepare_examples([{"input_ids": [1, 2]}, [1, 2]], ctx_len=8)


@pytest.mark.parametrize("fmt_row", [{"text": "x"}, {"prompt": "p", "completion": "c"},
                                     {"messages": [{"role": "user", "content": "x"}]}])
def test_tokenizer_required_for_text_formats(fmt_row):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        prepare_examples([fmt_row], ctx_len=8)


@pytest.mark.parametrize(("row", "message"), [
    ({"input_ids": [1, 65536]}, r"row 1: field 'input_ids' position 1 holds id 65536, outside the vocabulary"),
    ({"input_ids": [1, -1]}, r"row 1: field 'input_ids' position 1 holds id -1"),
    ({"input_ids": [1, 2.5]}, r"row 1: field 'input_ids' position 1 holds 2.5, not an integer"),
    ({"input_ids": [1, None]}, r"row 1: field 'input_ids' position 1 holds None"),
    ({"input_ids": [True, False]}, r"row 1: field 'input_ids' position 0 holds True"),
    ({"input_ids": [1, 2**70]}, r"row 1: field 'input_ids' position 1 holds id \d+, outside"),
    ({"input_ids": "1 2 3"}, r"row 1: field 'input_ids' must be a list of token ids, got str"),
    ({"input_ids": [[1], [2, 3]]}, r"row 1: field 'input_ids' must be a flat list"),
    ({"input_ids": [1, 2], "labels": [1]}, r"row 1: field 'labels' has 1 values but 'input_ids' has 2"),
    ({"input_ids": [1, 2], "labels": [1, -5]}, r"row 1: field 'labels' position 1 holds -5"),
    ({"input_ids": [1, 2], "labels": [1, 70000]}, r"row 1: field 'labels' position 1 holds 70000"),
    ({"input_ids": None}, r"row 1: field 'input_ids' is missing"),
])
def test_bad_tokenized_row_names_row_and_field(row, message):
    with pytest.raises(ValueError, match=message):
        prepare_examples([{"input_ids": [1, 2]}, row], ctx_len=8)


def test_bad_tokenized_row_in_an_arrow_dataset():
    dataset = datasets.Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]},
                                          {"input_ids": [3, 4, 5], "labels": [3, 4]}])
    with pytest.raises(ValueError, match="row 1: field 'labels' has 2 values but 'input_ids' has 3"):
        prepare_examples(dataset, ctx_len=8)


@pytest.mark.parametrize(("row", "message"), [
    ({"text": None}, r"row 1: field 'text' is missing"),
    ({"text": ["a"]}, r"row 1: field 'text' is a list, not a str"),
])
def test_bad_text_row(tok, row, message):
    with pytest.raises(ValueError, match=message):
        prepare_examples([{"text": "ok"}, row], tokenizer=tok, ctx_len=8)


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "p", "completion": None}, r"row 1: field 'completion' is missing"),
    ({"prompt": "p", "completion": [{"role": "assistant", "content": "c"}]},
     r"row 1: fields 'prompt' and 'completion' must both be strings or both be lists of messages"),
])
def test_bad_prompt_completion_row(tok, row, message):
    with pytest.raises(ValueError, match=message):
        prepare_examples([{"prompt": "p", "completion": "c"}, row], tokenizer=tok, ctx_len=8)


@pytest.mark.parametrize(("messages", "message"), [
    ("User: hi", r"row 1: field 'messages' must be a list of messages, got str"),
    ([{"role": "robot", "content": "x"}], r"row 1: field 'messages': message 0 has role 'robot'"),
    ([{"role": "user", "content": "x"}, {"role": "assistant"}], r"row 1: field 'messages': message 1 .*no 'content'"),
    ([{"role": "user", "content": 3}], r"row 1: field 'messages': message 0 .*must be a str"),
])
def test_bad_messages_row(tok, messages, message):
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(ValueError, match=message):
        prepare_examples([{"messages": good}, {"messages": messages}], tokenizer=tok, ctx_len=32)
