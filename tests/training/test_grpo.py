"""GRPOTrainer end to end on tiny models (CPU, fp32 unless stated): the seed snippet, TRL's numbers from the
saved rollouts, the reference KL, resume, rewards and the post-processing hook."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from checkpoints import random_state_dict, tiny_config
from processes import run_on_one_and_two_processes
from rwkvtune import AutoModel
from rwkvtune.generation import cpu_linear
from rwkvtune.model import RWKV7
from rwkvtune.peft import LoraConfig
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.training import GRPOConfig, GRPOTrainer

CONFIG = tiny_config(vocab_size=65536, n_layer=2, n_embd=64, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
TOKENIZER = WorldTokenizer.default()
#: Many stop ids, so that sampled completions end at different lengths.
STOPS = list(range(0, 65536, 40))
FAST = dict(precision="fp32", grad_cp=0, logging_steps=1, max_completion_length=12, num_generations=4,
            epoch_count=1)


def model(seed: int = 1) -> RWKV7:
    m = AutoModel.from_config(CONFIG, ctx_len=64)
    m.load_state_dict(random_state_dict(CONFIG, seed=seed))
    m.generation_config["stop_token_ids"] = STOPS
    return m


def prompts(n: int = 4) -> list[dict]:
    return [{"prompt": f"Q{i}: add {i} and {i + 1}.", "answer": str(2 * i + 1)} for i in range(n)]


def length_reward(completions, **kwargs):
    return [float(len(c) % 5) for c in completions]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_seed_grpo_snippet_runs_on_a_tiny_hub(tmp_path):
    hub = tmp_path / "hub"
    model().save_pretrained(hub, tokenizer=TOKENIZER)

    def reward_func(prompts, completions, **kwargs):
        return [1.0 if "correct" in c else 0.0 for c in completions]

    dataset = Dataset.from_list([{"prompt": f"What is {i}+2?", "input_ids": TOKENIZER.encode(f"What is {i}+2?")}
                                 for i in range(8)])
    config = GRPOConfig(
        micro_bsz=1, num_generations=8,
        max_prompt_length=2048, max_completion_length=8,
        steps_per_generation=8, temperature=1.0, top_p=0.95,
        lr_init=1e-6, lr_final=1e-7, accumulate_grad_batches=8,
        loss_type="dapo", beta=0.04, save_rollout_steps=16, output_dir=str(tmp_path / "out"),
    )
    lora_config = LoraConfig(r=64, lora_alpha=128)
    trainer = GRPOTrainer(model=str(hub), reward_funcs=reward_func, args=config, train_dataset=dataset,
                          peft_config=lora_config)
    result = trainer.train()
    assert result["step"] == 1 and result["kl"] == 0.0  # LoRA starts as the base: the reference
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo"])
def test_saved_rollouts_give_trl_advantages_and_first_loss(tmp_path, loss_type):
    config = GRPOConfig(output_dir=str(tmp_path), loss_type=loss_type, micro_bsz=2, save_rollout_steps=1,
                        max_steps=1, lr_init=1e-3, **FAST)
    GRPOTrainer(model(), length_reward, config, train_dataset=prompts()).train()
    rows = records(tmp_path / "rollouts" / "rollouts_step000001.jsonl")
    assert len(rows) == 2 * 4 and len({r["completion_length"] for r in rows}) > 1  # ragged completions
    rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float64)
    for row in rows:
        assert row["rewards"]["length_reward"] == float(len(row["completion"]) % 5)
    # TRL: A = (R - group mean) / (group std (Bessel) + 1e-4), groups of num_generations consecutive rows
    grouped = rewards.view(-1, 4)
    want = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    got = torch.tensor([r["advantage"] for r in rows], dtype=torch.float64)
    assert torch.allclose(got, torch.nan_to_num(want), atol=1e-6)
    # On-policy the ratio is 1 and each token's term is -A: dapo divides by all tokens, dr_grpo by rows x L
    lengths = torch.tensor([r["completion_length"] for r in rows], dtype=torch.float64)
    summed = -(got * lengths).sum()
    expected = summed / lengths.sum() if loss_type == "dapo" else summed / (len(rows) * config.max_completion_length)
    logged = records(tmp_path / "metrics.jsonl")[0]
    assert logged["loss"] == pytest.approx(float(expected), abs=1e-6)
    for key in ("reward", "reward_std", "rewards/length_reward/mean", "completions/mean_length",
                "completions/clipped_ratio", "entropy", "clip_ratio/region_mean", "frac_reward_zero_std",
                "time/rollout", "time/reward", "time/train"):
        assert key in logged, key
    assert logged["reward"] == pytest.approx(float(rewards.mean()))


def test_full_fine_tuning_reference_copy_and_kl(tmp_path):
    config = GRPOConfig(output_dir=str(tmp_path), beta=0.1, micro_bsz=1, max_steps=3, lr_init=1e-2, lr_final=1e-2,
                        **FAST)
    trained = model()
    GRPOTrainer(trained, length_reward, config, train_dataset=prompts()).train()
    kls = [r["kl"] for r in records(tmp_path / "metrics.jsonl")]
    assert kls[0] == 0.0 and kls[-1] > 0  # the policy moved away from the frozen copy of the start


class NoTiming:
    """A process-wide layout chooser that fails when asked to time: GRPO's sampling is seeded, and seeded
    sampling must take the pinned layout (a resumed run is a new process, whose timing could pick another)."""

    def get(self, key):
        return None

    def choose(self, key, forms, run):
        raise AssertionError("seeded sampling timed the decoder's weight layouts")


def test_resume_gives_the_same_rollouts_losses_and_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_linear, "_PROCESS_CHOOSER", NoTiming())
    common = dict(micro_bsz=1, steps_per_generation=2, num_iterations=2, accumulate_grad_batches=1, epoch_count=2,
                  save_every_n_batches=3, save_total_limit=0, epoch_save=0, save_rollout_steps=1, lr_init=1e-2,
                  lr_final=1e-3,
                  **{k: v for k, v in FAST.items() if k != "epoch_count"})
    full = model()
    GRPOTrainer(full, length_reward, GRPOConfig(output_dir=str(tmp_path / "a"), **common),
                train_dataset=prompts()).train()
    b = tmp_path / "b"
    GRPOTrainer(model(), length_reward, GRPOConfig(output_dir=str(b), **common), train_dataset=prompts()).train()
    # 4 prompts, S=2: 2 rollouts per epoch, each trained on S x mu = 4 micro-steps (one optimizer step each):
    # rollouts are sampled at steps 1, 5, 9 and 13. Resuming from batch9 lands inside the third rollout.
    for name in ("batch12", "batch15", "final", "rollouts"):
        shutil.rmtree(b / name)
    (b / "metrics.jsonl").write_text("")
    resumed = model()
    result = GRPOTrainer(resumed, length_reward, GRPOConfig(output_dir=str(b), resume_from_checkpoint="latest",
                                                            **common), train_dataset=prompts()).train()
    assert result["step"] == 16
    a_loss = [r["loss"] for r in records(tmp_path / "a" / "metrics.jsonl")]
    assert [r["loss"] for r in records(b / "metrics.jsonl")] == pytest.approx(a_loss[9:], abs=1e-6)
    assert sorted(p.name for p in (b / "rollouts").iterdir()) == ["rollouts_step000013.jsonl"]
    assert records(b / "rollouts" / "rollouts_step000013.jsonl") == records(
        tmp_path / "a" / "rollouts" / "rollouts_step000013.jsonl")
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(full.parameters(), resumed.parameters()))


def test_reward_function_errors_name_the_function(tmp_path):
    def broken(completions, **kwargs):
        raise KeyError("answer")

    def short(completions, **kwargs):
        return [1.0]

    config = GRPOConfig(output_dir=str(tmp_path / "x"), max_steps=1, **FAST)
    with pytest.raises(RuntimeError, match="reward function 'broken' raised KeyError"):
        GRPOTrainer(model(), [length_reward, broken], config, train_dataset=prompts()).train()
    config = GRPOConfig(output_dir=str(tmp_path / "y"), max_steps=1, **FAST)
    with pytest.raises(ValueError, match="reward function 'short' returned 1 values for 4 completions"):
        GRPOTrainer(model(), short, config, train_dataset=prompts()).train()
    with pytest.raises(ValueError, match="reward_weights has 1 weights for 2 reward functions"):
        GRPOTrainer(model(), [length_reward, short], GRPOConfig(reward_weights=[1.0]), train_dataset=prompts())

    def endless(completions, **kwargs):
        return [1.0] * (len(completions) - 1) + [-math.inf]

    config = GRPOConfig(output_dir=str(tmp_path / "z"), max_steps=1, **FAST)
    with pytest.raises(ValueError, match="reward function 'endless' returned -inf for completion 3; rewards must be "
                                         "finite"):
        GRPOTrainer(model(), endless, config, train_dataset=prompts()).train()


def test_completions_without_any_reward_are_warned_about_once_per_rollout(tmp_path, caplog):
    seen = []

    def every_other(completions, **kwargs):
        seen.append(list(completions))
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    config = GRPOConfig(output_dir=str(tmp_path), max_steps=2, **FAST)
    with caplog.at_level(logging.WARNING, logger="rwkvtune.grpo.sampling"):
        result = GRPOTrainer(model(), every_other, config, train_dataset=prompts()).train()
    assert result["step"] == 2  # half the completions have a reward: a warning, not an error
    warnings = [r.getMessage() for r in caplog.records if "have no reward" in r.getMessage()]
    assert len(warnings) == len(seen) == 2  # one per rollout, not one per completion
    first = warnings[0]
    assert first.startswith("2 of 4 completions of rollout 0") and "(every_other)" in first
    assert f"completion {seen[0][1][:120]!r}" in first and "prompt 'Q" in first
    assert "at least one reward function return a number for every completion" in first


@pytest.mark.parametrize("missing", [None, math.nan])
def test_a_step_in_which_no_completion_has_a_reward_stops_before_the_update(tmp_path, missing):
    def no_answer(completions, **kwargs):
        return [missing] * len(completions)

    policy = model()
    before = [p.detach().clone() for p in policy.parameters()]
    config = GRPOConfig(output_dir=str(tmp_path / "none"), max_steps=3, lr_init=1e-2, weight_decay=0.1, **FAST)
    with pytest.raises(ValueError, match=r"no completion of optimizer step 1 had a reward: the reward function\(s\) "
                                         r"'no_answer' returned None or NaN for all 4 completions it trained on"):
        GRPOTrainer(policy, no_answer, config, train_dataset=prompts()).train()
    assert all(torch.equal(p, q) for p, q in zip(before, policy.parameters()))
    # with another function scoring every completion, the missing ones are only left out of the sum
    config = GRPOConfig(output_dir=str(tmp_path / "other"), max_steps=1, **FAST)
    assert GRPOTrainer(model(), [no_answer, length_reward], config, train_dataset=prompts()).train()["step"] == 1


def test_dataset_columns_and_conversational_prompts_reach_the_rewards(tmp_path):
    seen = {}

    def check(prompts, completions, completion_ids, answer, trainer_state, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, step=trainer_state.global_step,
                    max_steps=trainer_state.max_steps)
        return [None if i % 2 else 1.0 for i in range(len(completions))]  # None: does not apply

    data = [{"prompt": [{"role": "user", "content": f"add {i}"}], "answer": str(i)} for i in range(2)]
    GRPOTrainer(model(), check, GRPOConfig(output_dir=str(tmp_path), max_steps=1, **FAST), train_dataset=data).train()
    first = seen["prompts"][0]
    assert first in ([{"role": "user", "content": "add 0"}], [{"role": "user", "content": "add 1"}])
    assert seen["prompts"] == [first] * 4 and seen["answer"] == [first[0]["content"][-1]] * 4
    assert seen["completions"][0][0]["role"] == "assistant"
    assert seen["step"] == 0 and seen["max_steps"] == 1


def test_postprocess_hook_output_is_what_rewards_and_loss_see(tmp_path):
    def shout(prompts, completions, completion_ids, masks, tokenizer, **extra_fields):
        new = [text.upper() + "!" for text in completions]
        ids = torch.zeros_like(completion_ids)
        keep = torch.zeros_like(masks)
        for i, text in enumerate(new):
            encoded = tokenizer.encode(text)[:completion_ids.shape[1]]
            ids[i, :len(encoded)] = torch.tensor(encoded)
            keep[i, :len(encoded)] = True
        return {"completions": new, "completion_ids": ids, "masks": keep}

    def ends_with_bang(completions, **kwargs):
        return [float(c.endswith("!")) for c in completions]

    config = GRPOConfig(output_dir=str(tmp_path / "ok"), max_steps=1, save_rollout_steps=1, **FAST)
    GRPOTrainer(model(), ends_with_bang, config, train_dataset=prompts(), completion_postprocess_fn=shout).train()
    rows = records(tmp_path / "ok" / "rollouts" / "rollouts_step000001.jsonl")
    assert all(r["completion"].endswith("!") and r["reward"] == 1.0 for r in rows)
    assert all(TOKENIZER.decode(r["completion_ids"]) == r["completion"][:len(TOKENIZER.decode(r["completion_ids"]))]
               for r in rows)

    def wrong_shape(completions, completion_ids, masks, **kwargs):
        return {"completions": completions, "completion_ids": completion_ids[:, :1], "masks": masks}

    config = GRPOConfig(output_dir=str(tmp_path / "bad"), max_steps=1, **FAST)
    with pytest.raises(ValueError, match=r"completion_ids must be a tensor of shape \[B\*G, C\]"):
        GRPOTrainer(model(), ends_with_bang, config, train_dataset=prompts(),
                    completion_postprocess_fn=wrong_shape).train()


def test_bad_grpo_settings_are_named():
    with pytest.raises(ValueError) as err:
        GRPOConfig(num_generations=1, loss_type="ppo", logprob_batch_size=6, num_iterations=0,
                   strategy="deepspeed_stage_2", top_p=0.0)
    text = str(err.value)
    for expected in ("num_generations must be an integer >= 2", "loss_type must be one of",
                     "num_iterations must be an integer >= 1", "GRPO runs on one device or under DDP",
                     "top_p must be in (0, 1]"):
        assert expected in text, expected
    with pytest.raises(ValueError, match="logprob_batch_size must be a multiple of num_generations"):
        GRPOConfig(num_generations=4, logprob_batch_size=6)
    with pytest.raises(ValueError, match="a rollout takes steps_per_generation x micro_bsz = 4 x 2 prompts"):
        GRPOTrainer(model(), length_reward, GRPOConfig(steps_per_generation=4, micro_bsz=2, output_dir="/tmp/never",
                                                       **FAST), train_dataset=prompts()).train()


def test_training_raises_the_reward_on_a_learnable_preference(tmp_path):
    """Reward completions whose first token id is even: GRPO moves probability there (the advantage sign works)."""
    def even_start(completion_ids, **kwargs):
        return [float(bool(ids) and ids[0] % 2 == 0) for ids in completion_ids]

    config = GRPOConfig(output_dir=str(tmp_path), micro_bsz=2, num_generations=8, max_completion_length=1,
                        lr_init=3e-2, lr_final=3e-2, epoch_count=12, precision="fp32", grad_cp=0, logging_steps=1,
                        top_k=8)
    GRPOTrainer(model(), even_start, config, train_dataset=prompts(2)).train()
    rewards = [r["reward"] for r in records(tmp_path / "metrics.jsonl")]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2 and math.isfinite(rewards[-1])


DDP_RUN = """
import sys
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
from test_grpo import FAST, length_reward, model, prompts
from rwkvtune.training import GRPOConfig, GRPOTrainer

devices = int(sys.argv[2])
config = GRPOConfig(output_dir=sys.argv[1], devices=devices, accelerator="cpu", micro_bsz=2 // devices, max_steps=2,
                    lr_init=1e-2, lr_final=1e-2, adam_eps=1e-2, save_rollout_steps=1, **FAST)
GRPOTrainer(model(), length_reward, config, train_dataset=prompts()).train()
"""


def test_two_process_ddp_equals_one_process(tmp_path):
    run_on_one_and_two_processes(tmp_path, DDP_RUN)
    for step in (1, 2):  # the same completions of each prompt (rank 0 writes every process's, rank-major)
        one, two = (sorted((r["prompt"], r["completion_ids"]) for r in
                           records(tmp_path / d / "rollouts" / f"rollouts_step{step:06d}.jsonl")) for d in ("d1", "d2"))
        assert one == two and len(one) == 2 * 4
    one, two = records(tmp_path / "d1" / "metrics.jsonl"), records(tmp_path / "d2" / "metrics.jsonl")
    for key in ("loss", "reward", "reward_std", "completions/mean_length"):
        assert [r[key] for r in one] == pytest.approx([r[key] for r in two], abs=1e-5), key
    # as in TRL, a loss-time metric is the mean over processes of each process's token mean
    assert [r["entropy"] for r in one] == pytest.approx([r["entropy"] for r in two], rel=1e-3)
    w1, w2 = (AutoModel.from_pretrained(tmp_path / d / "final").state_dict() for d in ("d1", "d2"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


@pytest.mark.parametrize("setup", ["full-bf16", "state-tuning"])
def test_the_reference_is_the_starting_policy(tmp_path, setup):
    from rwkvtune.peft import StateTuningConfig

    kwargs = {}
    policy = model()
    if setup == "full-bf16":
        policy = policy.to(torch.bfloat16)  # an official checkpoint's dtype; trained with fp32 masters
        precision = "bf16"
    else:
        kwargs["peft_config"] = StateTuningConfig()
        precision = "fp32"
    config = GRPOConfig(output_dir=str(tmp_path), beta=0.1, max_steps=2, lr_init=1e-2, lr_final=1e-2,
                        **{**FAST, "precision": precision})
    trainer = GRPOTrainer(policy, length_reward, config, train_dataset=prompts(), **kwargs)
    if setup == "state-tuning":
        with torch.no_grad():
            trainer.model.time_state.normal_(std=0.1)  # a starting state that is not zero
    trainer.train()
    kls = [r["kl"] for r in records(tmp_path / "metrics.jsonl")]
    assert kls[0] == 0.0 and kls[-1] > 0


def test_truncated_completions_are_left_out_of_the_loss_only(tmp_path):
    seen = []

    def record(completion_ids, **kwargs):
        seen.extend(len(ids) for ids in completion_ids)
        return [float(len(ids)) for ids in completion_ids]

    config = GRPOConfig(output_dir=str(tmp_path), max_steps=1, save_rollout_steps=1, mask_truncated_completions=True,
                        **{**FAST, "max_completion_length": 2})
    GRPOTrainer(model(), record, config, train_dataset=prompts()).train()
    rows = records(tmp_path / "rollouts" / "rollouts_step000001.jsonl")
    truncated = [r for r in rows if r["finish_reason"] == "length"]
    assert truncated and all(r["completion_length"] == 0 and len(r["completion_ids"]) == 2 for r in truncated)
    assert 2 in seen  # the reward functions saw every sampled token


def test_reserved_column_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot have columns named completions"):
        GRPOTrainer(model(), length_reward, GRPOConfig(output_dir=str(tmp_path), **FAST),
                    train_dataset=[{"prompt": "hi", "completions": "x"}] * 4).train()
