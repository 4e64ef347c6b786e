"""DPOTrainer end to end on tiny models (CPU, fp32): the first step is TRL's formula on our own log-probs, the
reference is the starting policy (copy, adapter off, starting state), precomputed references, resume, DDP,
TRL's metric names, and bad rows named."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checkpoints import random_state_dict, tiny_config
from processes import run_on_one_and_two_processes
from rwkvtune import AutoModel
from rwkvtune.model import RWKV7
from rwkvtune.peft import LoraConfig, StateTuningConfig
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.training import DPOConfig, DPOTrainer

CONFIG = tiny_config(vocab_size=65536, n_layer=2, n_embd=64, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
TOKENIZER = WorldTokenizer.default()
FAST = dict(precision="fp32", grad_cp=0, logging_steps=1, micro_bsz=2, lr_init=1e-2, lr_final=1e-2, adam_eps=1e-2)


def model(seed: int = 1) -> RWKV7:
    m = AutoModel.from_config(CONFIG, ctx_len=64)
    m.load_state_dict(random_state_dict(CONFIG, seed=seed))
    return m


def pairs(n: int = 4) -> list[dict]:
    return [{"prompt": f"Q{i}: what is {i} plus {i + 1}?", "chosen": f" {2 * i + 1}",
             "rejected": f" {2 * i + 3}, I think" if i % 2 else f" {i}"} for i in range(n)]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summed_logps(m: torch.nn.Module, rows: list[dict]) -> torch.Tensor:
    """``[B, 2]`` summed log-probs of (chosen, rejected), from full forwards of prompt + answer."""
    out = []
    with torch.no_grad():
        for row in rows:
            prompt = TOKENIZER.encode(row["prompt"])
            pair = []
            for key in ("chosen", "rejected"):
                answer = TOKENIZER.encode(row[key])
                logits = m(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1].double()
                pair.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None]).sum()))
            out.append(pair)
    return torch.tensor(out, dtype=torch.float64)


def test_first_step_is_trls_formula_on_our_logprobs(tmp_path):
    policy, reference = model(1), RWKV7(CONFIG)  # a reference of another class than the policy's hub model
    reference.load_state_dict(random_state_dict(CONFIG, seed=2))
    rows = pairs(2)
    mine, ref = summed_logps(policy, rows), summed_logps(reference, rows)
    config = DPOConfig(output_dir=str(tmp_path), beta=0.3, max_steps=1, **FAST)
    DPOTrainer(policy, ref_model=reference, args=config, train_dataset=rows).train()
    logged = records(tmp_path / "metrics.jsonl")[0]
    chosen, rejected = 0.3 * (mine[:, 0] - ref[:, 0]), 0.3 * (mine[:, 1] - ref[:, 1])
    # TRL: loss = mean(-logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))); rewards = beta * log ratios
    assert logged["loss"] == pytest.approx(float(-F.logsigmoid(chosen - rejected).mean()), abs=1e-5)
    assert logged["rewards/chosen"] == pytest.approx(float(chosen.mean()), abs=1e-5)
    assert logged["rewards/rejected"] == pytest.approx(float(rejected.mean()), abs=1e-5)
    assert logged["rewards/margins"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-5)
    assert logged["rewards/accuracies"] == float((chosen > rejected).double().mean())
    assert logged["logps/chosen"] == pytest.approx(float(mine[:, 0].mean()), abs=1e-4)
    assert logged["logps/rejected"] == pytest.approx(float(mine[:, 1].mean()), abs=1e-4)
    assert logged["entropy"] > 0


def test_ipo_and_rpo_alpha_first_step(tmp_path):
    policy, reference = model(1), model(3)
    rows = pairs(2)
    mine, ref = summed_logps(policy, rows), summed_logps(reference, rows)
    lengths = torch.tensor([[len(TOKENIZER.encode(r[k])) for k in ("chosen", "rejected")] for r in rows])
    config = DPOConfig(output_dir=str(tmp_path), beta=0.5, loss_type="ipo", rpo_alpha=0.7, max_steps=1, **FAST)
    DPOTrainer(policy, ref_model=reference, args=config, train_dataset=rows).train()
    ratios = (mine - ref) / lengths  # TRL's ipo: per-token log ratios
    ipo = ((ratios[:, 0] - ratios[:, 1] - 1 / (2 * 0.5)) ** 2).mean()
    nll = -mine[:, 0].sum() / lengths[:, 0].sum()  # mean NLL over the chosen tokens of the batch
    assert records(tmp_path / "metrics.jsonl")[0]["loss"] == pytest.approx(float(ipo + 0.7 * nll), rel=1e-5)


@pytest.mark.parametrize("setup", ["full", "lora", "state"])
def test_the_reference_is_the_starting_policy(tmp_path, setup):
    kwargs = {"lora": dict(peft_config=LoraConfig(r=8, lora_alpha=16)),
              "state": dict(peft_config=StateTuningConfig())}.get(setup, {})
    config = DPOConfig(output_dir=str(tmp_path), max_steps=3, **FAST)
    trainer = DPOTrainer(model(), args=config, train_dataset=pairs(6), **kwargs)
    if setup == "state":
        with torch.no_grad():
            trainer.model.time_state.normal_(std=0.1)  # a starting state that is not zero
    trainer.train()
    logged = records(tmp_path / "metrics.jsonl")
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logged[0]["rewards/chosen"] == 0 and logged[0]["rewards/margins"] == 0
    assert logged[-1]["rewards/margins"] > 0  # the policy moved from the reference, towards the chosen answers
    written = {"full": "config.json", "lora": "adapter_model.safetensors", "state": "state_tuning.safetensors"}
    assert (tmp_path / "final" / written[setup]).is_file()


@pytest.mark.parametrize("setup", ["ref_model", "lora"])
def test_precomputed_reference_gives_the_same_run(tmp_path, setup):
    trained = []
    for name, precompute in (("a", False), ("b", True)):
        kwargs = dict(ref_model=model(5)) if setup == "ref_model" else dict(peft_config=LoraConfig(r=8, lora_alpha=16))
        config = DPOConfig(output_dir=str(tmp_path / name), precompute_ref_log_probs=precompute, max_steps=3, **FAST)
        trainer = DPOTrainer(model(), args=config, train_dataset=pairs(6), **kwargs)
        trainer.train()
        trained.append(trainer.model)
    one, two = records(tmp_path / "a" / "metrics.jsonl"), records(tmp_path / "b" / "metrics.jsonl")
    for key in ("loss", "rewards/chosen", "rewards/margins"):
        assert [r[key] for r in one] == pytest.approx([r[key] for r in two], abs=1e-6), key
    assert one[-1]["rewards/margins"] != 0
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(trained[0].parameters(), trained[1].parameters()))


def test_reference_free_compares_with_zero(tmp_path):
    policy = model()
    rows = pairs(2)
    mine = summed_logps(policy, rows)
    config = DPOConfig(output_dir=str(tmp_path), reference_free=True, beta=0.1, max_steps=1, **FAST)
    DPOTrainer(policy, args=config, train_dataset=rows).train()
    expected = -F.logsigmoid(0.1 * (mine[:, 0] - mine[:, 1])).mean()
    assert records(tmp_path / "metrics.jsonl")[0]["loss"] == pytest.approx(float(expected), abs=1e-5)


def test_resume_gives_the_same_losses_and_weights(tmp_path):
    common = dict(epoch_count=2, save_every_n_batches=2, save_total_limit=0, epoch_save=0, **FAST)
    full = model()
    DPOTrainer(full, args=DPOConfig(output_dir=str(tmp_path / "a"), **common), train_dataset=pairs(6)).train()
    b = tmp_path / "b"
    DPOTrainer(model(), args=DPOConfig(output_dir=str(b), **common), train_dataset=pairs(6)).train()
    for name in ("batch4", "batch6", "final"):  # 3 steps per epoch: resume from batch2, inside the first epoch
        shutil.rmtree(b / name)
    (b / "metrics.jsonl").write_text("")
    resumed = model()
    result = DPOTrainer(resumed, args=DPOConfig(output_dir=str(b), resume_from_checkpoint="latest", **common),
                        train_dataset=pairs(6)).train()
    assert result["step"] == 6
    a_loss = [r["loss"] for r in records(tmp_path / "a" / "metrics.jsonl")]
    assert [r["loss"] for r in records(b / "metrics.jsonl")] == pytest.approx(a_loss[2:], abs=1e-6)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(full.parameters(), resumed.parameters()))


DDP_RUN = """
import sys
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
from test_dpo import FAST, model, pairs
from rwkvtune.training import DPOConfig, DPOTrainer

devices = int(sys.argv[2])
config = DPOConfig(output_dir=sys.argv[1], devices=devices, accelerator="cpu", max_steps=2,
                   precompute_ref_log_probs=sys.argv[4] == "precompute", **{**FAST, "micro_bsz": 2 // devices},
                   accumulate_grad_batches=1)
DPOTrainer(model(), ref_model=model(7), args=config, train_dataset=pairs(5)).train()
"""


@pytest.mark.parametrize("reference", ["scored", "precompute"])
def test_two_process_ddp_equals_one_process(tmp_path, reference):
    run_on_one_and_two_processes(tmp_path, DDP_RUN, reference)
    one, two = records(tmp_path / "d1" / "metrics.jsonl"), records(tmp_path / "d2" / "metrics.jsonl")
    for key in ("loss", "rewards/chosen", "rewards/margins", "logps/chosen", "rewards/accuracies"):
        assert [r[key] for r in one] == pytest.approx([r[key] for r in two], abs=1e-5), key
    w1, w2 = (AutoModel.from_pretrained(tmp_path / d / "final").state_dict() for d in ("d1", "d2"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def test_conversational_and_pretokenized_rows_read_the_same_tokens(tmp_path):
    conversational = [{"prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
                       "chosen": [{"role": "assistant", "content": "5"}],
                       "rejected": [{"role": "assistant", "content": "6"}]}] * 2
    prompt = TOKENIZER.encode(TOKENIZER.apply_chat_template(conversational[0]["prompt"], add_generation_prompt=True))
    full = TOKENIZER.apply_chat_template(conversational[0]["prompt"] + conversational[0]["chosen"])
    chosen_text = full[len(TOKENIZER.apply_chat_template(conversational[0]["prompt"], add_generation_prompt=True)):]
    assert chosen_text.startswith(" 5") and chosen_text.endswith("\n\n")  # what SFT trains the reply as
    tokenized = [{"prompt_input_ids": prompt, "chosen_input_ids": TOKENIZER.encode(chosen_text),
                  "rejected_input_ids": TOKENIZER.encode(chosen_text.replace("5", "6"))}] * 2
    for name, rows in (("c", conversational), ("t", tokenized)):
        DPOTrainer(model(), ref_model=model(4), args=DPOConfig(output_dir=str(tmp_path / name), max_steps=1, **FAST),
                   train_dataset=rows).train()
    c, t = records(tmp_path / "c" / "metrics.jsonl")[0], records(tmp_path / "t" / "metrics.jsonl")[0]
    assert c["loss"] == pytest.approx(t["loss"], abs=1e-6) and c["logps/chosen"] == pytest.approx(t["logps/chosen"])


def test_eval_dataset_logs_the_dpo_loss(tmp_path):
    config = DPOConfig(output_dir=str(tmp_path), max_steps=2, eval_steps=1, **FAST)
    DPOTrainer(model(), args=config, train_dataset=pairs(4), eval_dataset=pairs(3)).train()
    evals = [r["eval_loss"] for r in records(tmp_path / "metrics.jsonl") if "eval_loss" in r]
    assert len(evals) == 2 and evals[0] != evals[1] and all(0 < v < 5 for v in evals)


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "chosen": "b"}], "missing: rejected"),
    ([{"prompt": "a", "chosen": "b", "rejected": None}], "row 0: 'rejected' is missing"),
    ([{"prompt": "a", "chosen": "", "rejected": "c"}], "row 0: 'chosen' is empty"),
    ([{"prompt": "", "chosen": "b", "rejected": "c"}], "row 0: the prompt is empty"),
    ([{"prompt": "x", "chosen": " same", "rejected": " same"}], "no DPO pair is left"),
    ([{"prompt": "a", "chosen": "b", "rejected": ["c"]}], "must all be strings or all be lists of messages"),
])
def test_bad_rows_are_named(tmp_path, rows, message):
    trainer = DPOTrainer(model(), args=DPOConfig(output_dir=str(tmp_path), max_steps=1, **FAST), train_dataset=rows)
    with pytest.raises(ValueError, match=message):
        trainer.train()


def test_long_prompts_keep_their_last_tokens_and_answers_their_first(tmp_path, caplog):
    from rwkvtune.data.preferences import prepare_preferences

    rows = [{"prompt_input_ids": list(range(1, 21)), "chosen_input_ids": [5, 6, 7, 8],
             "rejected_input_ids": [5, 6, 9, 9]}]
    with caplog.at_level(logging.WARNING):
        [pair] = prepare_preferences(rows, tokenizer=TOKENIZER, vocab_size=100, max_prompt_length=8,
                                     max_completion_length=3)
    assert pair.prompt_ids == list(range(13, 21)) and pair.chosen_ids == [5, 6, 7] and pair.rejected_ids == [5, 6, 9]
    assert "1 of 1 prompts were longer than max_prompt_length=8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        kept = prepare_preferences(rows * 2 + [{**rows[0], "rejected_input_ids": [1]}], tokenizer=TOKENIZER,
                                   vocab_size=100, max_prompt_length=8, max_completion_length=2)
    assert len(kept) == 1 and kept[0].rejected_ids == [1]
    assert "left out 2 of 3 pairs whose chosen and rejected answers are the same in their first " \
           "max_completion_length=2 tokens (they hold no preference): rows 0, 1" in caplog.text


def test_bad_settings_are_named():
    with pytest.raises(ValueError) as err:
        DPOConfig(loss_type=["sigmoid", "nope"], loss_weights=[1.0], beta=0, label_smoothing=0.5, strategy="fsdp")
    text = str(err.value)
    for part in ("unknown loss_type 'nope'", "loss_weights has 1 weights for 2 loss types",
                 "beta must be a finite number > 0", "label_smoothing must be in [0, 0.5)", "not 'fsdp'"):
        assert part in text, part
    assert DPOConfig(loss_type="aot_pair").loss_types == ("aot_unpaired",)
    with pytest.raises(ValueError, match="label_smoothing is read only by robust"):
        DPOConfig(loss_type="sigmoid", label_smoothing=0.1)  # would silently be plain DPO
    with pytest.raises(ValueError, match="not both"):
        DPOTrainer(model(), ref_model=model(), args=DPOConfig(reference_free=True), train_dataset=pairs())
