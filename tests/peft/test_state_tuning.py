"""State tuning: only the start states train; the saved state restores the trained model in generate and in
the ``rwkv`` runtime; RWKV-PEFT's state files load; bad files are named."""

from __future__ import annotations

import json
import math

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkv_oracle import load_reference, reference_sequence
from rwkvtune.generation import SamplingParams, generate
from rwkvtune.hub import save_weights
from rwkvtune.model import RWKV7
from rwkvtune.peft import StateTunedModel, StateTuningConfig, get_peft_model, load_adapter
from rwkvtune.peft.state_tuning import STATE_FILE
from rwkvtune.training import SFTConfig, SFTTrainer

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=1000, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
PROMPT = [5, 17, 250, 33]
ANSWER = [400, 401, 402]


def base_model(seed: int = 0) -> RWKV7:
    model = RWKV7(CONFIG)
    model.load_state_dict(random_state_dict(CONFIG, seed=seed))
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A state trained to answer PROMPT with ANSWER (a task the frozen random model does not do)."""
    out = tmp_path_factory.mktemp("state") / "out"
    model = base_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"input_ids": PROMPT + ANSWER, "labels": [-100] * len(PROMPT) + ANSWER}] * 8
    config = SFTConfig(ctx_len=16, micro_bsz=4, epoch_count=12, lr_init=0.1, lr_final=0.1, warmup_steps=0,
                       precision="fp32", grad_cp=0, logging_steps=1, output_dir=str(out))
    trainer = SFTTrainer(model, config, train_dataset=rows, peft_config=StateTuningConfig())
    result = trainer.train()
    return dict(out=out, base=model, before=before, tuned=trainer.model, result=result)


def greedy(model, n: int = len(ANSWER)) -> list[int]:
    return generate(model, [PROMPT], SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=[]))[0].token_ids


def test_only_the_states_train_and_the_answer_is_learned(run):
    tuned = run["tuned"]
    assert isinstance(tuned, StateTunedModel)
    assert all(torch.equal(run["before"][k], v) for k, v in run["base"].state_dict().items())
    assert tuned.time_state.abs().max() > 0 and [n for n, p in tuned.named_parameters() if p.requires_grad] == [
        "time_state"]
    losses = [json.loads(line)["loss"] for line in (run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0] / 3
    assert greedy(tuned) == ANSWER and greedy(run["base"]) != ANSWER


def test_saved_state_restores_the_trained_model(run):
    final = run["out"] / "final"
    assert [p.name for p in final.iterdir()] == [STATE_FILE]
    assert (final / STATE_FILE).stat().st_size < 2 * 4 * 64 * 64 + 4096  # L x H x N x N float32 + header
    assert not load_adapter(base_model(), final).time_state.requires_grad
    for source in (final, final / STATE_FILE, run["out"] / "epoch12"):
        loaded = load_adapter(base_model(), source, is_trainable=True)
        assert loaded.time_state.requires_grad
        assert torch.equal(loaded.time_state, run["tuned"].time_state)
        assert greedy(loaded) == ANSWER
        assert loaded.generate([PROMPT], SamplingParams(max_new_tokens=3, temperature=0))[0].token_ids == ANSWER


def test_tuned_state_matches_the_rwkv_runtime(run, tmp_path):
    tuned = load_adapter(base_model(), run["out"] / "final")
    weights = tmp_path / "base.pth"
    save_weights(base_model().state_dict(), weights)
    reference = load_reference(weights)
    ids = PROMPT + ANSWER
    expected, _ = reference_sequence(reference, ids)  # from zeros: the untuned model
    with torch.no_grad():
        ours = tuned(torch.tensor([ids])).logits[0]
        untuned = base_model()(torch.tensor([ids])).logits[0]
    assert (untuned - expected).abs().max() < 1e-4 and (ours - expected).abs().max() > 1e-2
    state = tuned.initial_state(1).to_rwkv_list()
    logits, _ = reference.forward(list(ids), state, full_output=True)
    assert (ours - logits.float()).abs().max() < 1e-4


def test_rwkv_peft_state_files_load(run, tmp_path):
    tuned = run["tuned"]
    path = tmp_path / "rwkv-peft-state.pth"
    torch.save({f"blocks.{i}.att.time_state": tuned.time_state[i].detach().to(torch.bfloat16) for i in range(2)}, path)
    loaded = load_adapter(base_model(), path)
    assert torch.equal(loaded.time_state, tuned.time_state.detach().to(torch.bfloat16).float())
    start = get_peft_model(base_model(), StateTuningConfig(init_state=str(path)), verbose=False)
    assert torch.equal(start.time_state, loaded.time_state)


def test_bad_state_files_are_named(run, tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"blocks.0.att.time_state": torch.zeros(2, 32, 32)}, wrong)
    with pytest.raises(ValueError, match=r"not a state for this model \(L2-C64-V1000, H=1, N=64\):\n  blocks.1.att."
                                         r"time_state missing\n  blocks.0.att.time_state has shape \(2, 32, 32\), "
                                         r"expected \(1, 64, 64\)"):
        load_adapter(base_model(), wrong)
    other_shape = RWKV7(tiny_config())
    other_shape.load_state_dict(random_state_dict(tiny_config()))
    with pytest.raises(ValueError, match="expected \\(2, 64, 64\\)"):
        load_adapter(other_shape, run["out"] / "final")
    with pytest.raises(FileNotFoundError, match="state file not found"):
        get_peft_model(base_model(), StateTuningConfig(init_state=str(tmp_path / "none.pth")))
    with pytest.warns(UserWarning, match="tuned on a base with weights sha256"):
        load_adapter(base_model(seed=3), run["out"] / "final")
