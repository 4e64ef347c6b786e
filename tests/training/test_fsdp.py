"""``strategy="fsdp"`` (PyTorch FSDP2 through Fabric's ModelParallelStrategy) on 2 CPU processes (gloo):
it trains what DDP and one plain process train (accumulation and clipping included), resumes exactly from
its sharded checkpoints, and its ``final/`` is the whole model, which the ``rwkv`` runtime loads.

The runs are shared by the tests below (a module fixture); each is a subprocess with one torch thread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from processes import TRAINING_TESTS
from rwkv_oracle import load_reference, reference_sequence
from test_trainers import metrics, random_rows, small_model, _weights
from rwkvtune import AutoModel
from rwkvtune.engine.checkpoint import resolve_resume
from rwkvtune.engine.fabric import make_strategy
from rwkvtune.training import GRPOConfig, SFTConfig, SFTTrainer

# adam_eps=1e-2 as in the DDP test (a tiny eps turns gloo's summation-order rounding into lr-sized steps);
# grad_clip=0.05 is below every step's gradient norm, so every step is clipped (checked below).
COMMON = dict(ctx_len=32, accumulate_grad_batches=2, epoch_count=1, accelerator="cpu", precision="fp32", grad_cp=1,
              warmup_steps=1, logging_steps=1, lr_init=1e-3, lr_final=1e-4, adam_eps=1e-2, grad_clip=0.05,
              epoch_save=0, save_every_n_batches=2, save_total_limit=0)
ROWS = dict(n=16, seed=3)  # 16 rows / (2 processes x 1 row x 2 micro-batches) = 4 optimizer steps
IDS = [5, 17, 230, 999, 3, 64, 128, 7]

RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[4])
    import json
    import torch
    torch.set_num_threads(1)
    from test_fsdp import COMMON, IDS, ROWS
    from test_trainers import random_rows, small_model
    from rwkvtune.training import SFTConfig, SFTTrainer

    out, devices, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    overrides = json.loads(sys.argv[5])
    config = SFTConfig(output_dir=out, devices=devices, strategy=strategy, micro_bsz=2 // devices,
                       **{**COMMON, **overrides})
    trainer = SFTTrainer(small_model(), config, train_dataset=random_rows(**ROWS))
    trainer.train()
    # The logits of the module as trained (under FSDP every process takes part: the module is sharded).
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(torch.tensor([IDS])).logits[0]
    if int(torch.distributed.get_rank() if torch.distributed.is_initialized() else 0) == 0:
        torch.save(logits, out + "/trained_logits.pt")
""")


def run(output_dir: Path, devices: int, strategy: str, **overrides) -> None:
    script = output_dir.parent / "fsdp_run.py"
    script.write_text(RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRAINING_TESTS.parent), str(TRAINING_TESTS)])}
    proc = subprocess.run([sys.executable, str(script), str(output_dir), str(devices), strategy, str(TRAINING_TESTS),
                           json.dumps(overrides)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """``plain`` (1 process), ``ddp`` and ``fsdp`` (2 processes) runs of the same training, and ``resumed``:
    the FSDP run continued from a copy of its step-2 checkpoint."""
    root = tmp_path_factory.mktemp("fsdp")
    run(root / "plain", 1, "auto")
    run(root / "ddp", 2, "ddp")
    run(root / "fsdp", 2, "fsdp")
    (root / "resumed").mkdir()
    shutil.copytree(root / "fsdp" / "batch2", root / "resumed" / "batch2")
    run(root / "resumed", 2, "fsdp", resume_from_checkpoint="latest")
    return root


def test_fsdp_on_two_processes_trains_what_ddp_and_one_process_train(runs, tmp_path):
    losses = {name: [m["loss"] for m in metrics(runs / name)] for name in ("plain", "ddp", "fsdp")}
    assert len(losses["fsdp"]) == 4
    assert losses["fsdp"] == pytest.approx(losses["plain"], abs=1e-5)
    assert losses["fsdp"] == pytest.approx(losses["ddp"], abs=1e-5)
    weights = {name: _weights(runs / name) for name in ("plain", "ddp", "fsdp")}
    assert weights["fsdp"].keys() == weights["plain"].keys()
    for key, expected in weights["plain"].items():  # FSDP shards every parameter: final/ holds them whole
        assert weights["fsdp"][key].shape == expected.shape and weights["fsdp"][key].dtype == torch.float32, key
        torch.testing.assert_close(weights["fsdp"][key], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(weights["fsdp"][key], weights["ddp"][key], atol=1e-6, rtol=0)
    # Clipping changed every run: without it the same training ends elsewhere. So FSDP clipped by the
    # global norm, as DDP does (a norm over each process's shards would have scaled each shard apart).
    config = SFTConfig(output_dir=str(tmp_path / "unclipped"), devices=1, micro_bsz=2, **{**COMMON, "grad_clip": 0})
    SFTTrainer(small_model(), config, train_dataset=random_rows(**ROWS)).train()
    unclipped = _weights(tmp_path / "unclipped")
    assert max((unclipped[k] - weights["plain"][k]).abs().max().item() for k in unclipped) > 1e-4


def test_fsdp_resumes_exactly_from_its_sharded_checkpoint(runs, tmp_path):
    fsdp = runs / "fsdp"
    assert sorted(p.name for p in fsdp.iterdir()) == ["batch2", "batch4", "final", "metrics.jsonl",
                                                      "trained_logits.pt"]  # no staging .tmp directory left
    state = fsdp / "batch2" / "state.pt"  # a directory: each process's shards, the index, the rest
    assert sorted(p.name for p in state.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert json.loads((fsdp / "batch2" / "trainer_state.json").read_text()) == {"step": 2, "epoch": 0, "window": 2}
    assert resolve_resume(fsdp, str(fsdp / "batch2")) == fsdp / "batch2"
    assert resolve_resume(fsdp, "latest") == fsdp / "batch4"

    first, resumed = metrics(fsdp), metrics(runs / "resumed")
    assert [m["step"] for m in resumed] == [3, 4]
    for m in resumed:
        assert m["loss"] == pytest.approx(first[m["step"] - 1]["loss"], abs=1e-6)
    wa, wb = _weights(fsdp), _weights(runs / "resumed")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)

    # A sharded checkpoint does not resume on one process or under DDP: the error names the way.
    shutil.copytree(fsdp / "batch2", tmp_path / "batch2")
    config = SFTConfig(output_dir=str(tmp_path), devices=1, micro_bsz=2, **{**COMMON, "resume_from_checkpoint": "latest"})
    with pytest.raises(ValueError, match="saved under a sharded strategy .* resume with the strategy it was saved with"):
        SFTTrainer(small_model(), config, train_dataset=random_rows(**ROWS)).train()


def test_fsdp_final_is_the_trained_model_here_and_in_the_rwkv_runtime(runs):
    final = runs / "fsdp" / "final"
    trained = torch.load(runs / "fsdp" / "trained_logits.pt")  # the sharded module, after training
    assert (trained - torch.load(runs / "plain" / "trained_logits.pt")).abs().max().item() < 1e-5
    loaded = AutoModel.from_pretrained(final).eval()
    assert loaded.dtype == torch.float32  # the model came in fp32
    with torch.no_grad():
        assert (loaded(torch.tensor([IDS])).logits[0] - trained).abs().max().item() < 1e-5
    expected, _ = reference_sequence(load_reference(final / "model.pth"), IDS)
    assert (expected - trained).abs().max().item() < 1e-4


def test_fsdp_refusals_name_the_way(tmp_path):
    with pytest.raises(ValueError, match="strategy='fsdp' runs precision='bf16' or 'fp32', not 'fp16'"):
        SFTConfig(strategy="fsdp", precision="fp16")
    with pytest.raises(ValueError, match="infctx runs on one device or under DDP"):
        SFTConfig(strategy="fsdp", train_type="infctx", ctx_len=64, chunk_ctx=32)
    with pytest.raises(ValueError, match="GRPO runs on one device or under DDP"):
        GRPOConfig(strategy="fsdp")
    from rwkvtune.peft import LoraConfig, StateTuningConfig

    for adapter in (LoraConfig(r=2), StateTuningConfig()):
        config = SFTConfig(output_dir=str(tmp_path), strategy="fsdp", devices=2, micro_bsz=1, **COMMON)
        with pytest.raises(ValueError, match="do not run under strategy='fsdp' yet; use strategy='ddp'"):
            SFTTrainer(small_model(), config, train_dataset=random_rows(4), peft_config=adapter)
    # One data-parallel group over every process of every node; no tensor parallelism.
    strategy = make_strategy(SFTConfig(strategy="fsdp", devices=2, num_nodes=3))
    assert (type(strategy).__name__, strategy._data_parallel_size, strategy._tensor_parallel_size) == \
        ("ModelParallelStrategy", 6, 1)
