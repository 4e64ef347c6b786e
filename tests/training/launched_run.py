"""A tiny training run for the multi-process tests, started by whatever launcher the test uses (torchrun,
an srun-like environment, Fabric's own launcher).

Arguments: ``output_dir trainer overrides [SIGNAL:step]``: ``trainer`` is ``sft`` or ``grpo``, ``overrides`` a
JSON object of config fields (``num_nodes`` and ``devices`` among them); ``SIGKILL:3`` makes global rank 1 kill
itself at the start of optimizer step 3 (a machine lost mid-run), ``SIGSTOP:3`` stop itself (a machine that
hangs), after writing its process id to ``<output_dir>.rank1.pid``. ``micro_bsz`` is split over the processes
so that every run trains on the same rows per optimizer step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

import torch  # noqa: E402

torch.set_num_threads(1)

import rwkvtune.engine.loop as loop  # noqa: E402


def fail_at_step(step: int, how: signal.Signals, pid_file: Path) -> None:
    """Global rank 1 gets ``how`` at the start of optimizer step ``step``: SIGKILL, a machine that loses power;
    SIGSTOP, one that hangs. It writes its process id to ``pid_file`` first (a test has to end it)."""
    train_window = loop._train_window

    def failing(fabric, *args, **kwargs):
        if fabric.global_rank == 1 and args[4] + 1 == step:  # args[4]: the steps already taken
            pid_file.write_text(str(os.getpid()))
            os.kill(os.getpid(), how)
        return train_window(fabric, *args, **kwargs)

    loop._train_window = failing


def main() -> None:
    output_dir, trainer, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if len(sys.argv) > 4:
        how, step = sys.argv[4].split(":")
        fail_at_step(int(step), signal.Signals[how], Path(f"{output_dir}.rank1.pid"))
    processes = overrides.get("devices", 1) * overrides.get("num_nodes", 1)
    if trainer == "sft":
        from test_trainers import FAST, random_rows, small_model
        from rwkvtune.training import SFTConfig, SFTTrainer

        config = SFTConfig(output_dir=output_dir, ctx_len=32, micro_bsz=4 // processes, epoch_count=1, accelerator="cpu",
                           **{**FAST, "adam_eps": 1e-2, **overrides})
        SFTTrainer(small_model(), config, train_dataset=random_rows(16, seed=11)).train()
    else:
        from test_grpo import FAST, length_reward, model, prompts
        from rwkvtune.training import GRPOConfig, GRPOTrainer

        config = GRPOConfig(output_dir=output_dir, accelerator="cpu", micro_bsz=2 // processes, max_steps=2,
                            lr_init=1e-2, lr_final=1e-2, **{**FAST, "adam_eps": 1e-2, **overrides})
        GRPOTrainer(model(), length_reward, config, train_dataset=prompts()).train()


if __name__ == "__main__":
    main()
