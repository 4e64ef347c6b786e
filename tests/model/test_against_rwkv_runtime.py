"""Our model equals the ``rwkv`` 0.8.32 runtime (cpu fp32) on random official-format checkpoints."""

from __future__ import annotations

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkv_oracle import load_reference, reference_sequence, reference_token_by_token
from rwkvtune import AutoModel
from rwkvtune.model import RWKVState

TOL = 1e-4

CASES = {
    "fp32-L3": dict(config=tiny_config(n_layer=3), dtype=torch.float32, layer0_value_lora=True),
    "bf16-file": dict(config=tiny_config(), dtype=torch.bfloat16, layer0_value_lora=True),
    "no-layer0-v": dict(config=tiny_config(), dtype=torch.float32, layer0_value_lora=False),
    "vocab-65536": dict(config=tiny_config(n_embd=64, vocab_size=65536, dim_ffn=256), dtype=torch.float32,
                        layer0_value_lora=False),
}


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    case = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param) / "model.pth"
    torch.save(random_state_dict(case["config"], seed=len(request.param), dtype=case["dtype"],
                                 layer0_value_lora=case["layer0_value_lora"]), path)
    ours = AutoModel.from_pretrained(path, dtype="fp32").eval()
    tokens = torch.randint(0, case["config"].vocab_size, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    return ours, load_reference(path), tokens


def _assert_state_close(ours: RWKVState, reference: list[torch.Tensor]) -> None:
    theirs = RWKVState.from_rwkv_list([t.float() for t in reference])
    for name, a, b in zip(("att_shift", "wkv", "ffn_shift"), ours._parts(), theirs._parts()):
        assert (a.float() - b).abs().max().item() <= TOL, name


@torch.no_grad()
def test_whole_sequence_matches(checkpoint):
    ours, reference, tokens = checkpoint
    expected, expected_state = reference_sequence(reference, tokens)
    out = ours(torch.tensor([tokens]), return_state=True)
    assert (out.logits[0] - expected).abs().max().item() <= TOL
    _assert_state_close(out.state, expected_state)


@torch.no_grad()
def test_token_by_token_matches(checkpoint):
    ours, reference, tokens = checkpoint
    expected, expected_state = reference_token_by_token(reference, tokens)
    state, rows = None, []
    for token in tokens:
        logits, state = ours.step(torch.tensor([token]), state)
        rows.append(logits[0])
    assert (torch.stack(rows) - expected).abs().max().item() <= TOL
    _assert_state_close(state, expected_state)
