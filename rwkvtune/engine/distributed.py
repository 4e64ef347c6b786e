"""What the processes of one run agree on, and what they do when one of them is lost.

* **One decision, made once.** Where to resume from and whether ``output_dir`` may be used are decided by
  global rank 0 and sent to the others (:func:`decided_once`): every machine then resumes from the same
  checkpoint whatever its own view of the directory, and an error found there stops every process instead
  of leaving the others waiting for it.
* **One directory, seen by all.** Global rank 0 writes checkpoints (under sharded strategies every process
  writes its shard into the same directory) and every process reads them back on resume, so a multi-node
  run needs ``output_dir`` on storage all machines share; :func:`check_shared_directory` proves it at start
  rather than at the first save or resume.
* **A lost process.** When a process dies or stops answering, the others fail in their next collective
  (at once for a closed connection, else after ``ddp_timeout``) with the backend's message about a socket;
  :func:`lost_process_errors` turns it into one that says what happened and how to go on.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

from rwkvtune.engine.checkpoint import TRAINER_STATE_FILE, TrainProgress, checkpoint_dirs

T = TypeVar("T")


class LostProcessError(RuntimeError):
    """Another process of the run stopped, hung past the collective timeout, or became unreachable."""


def decided_once(fabric, decide: Callable[[], T]) -> T:
    """``decide()`` run on global rank 0 only; its result, or the exception it raised, on every process."""
    if fabric.world_size == 1:
        return decide()
    outcome: tuple[str, object] | None = None
    if fabric.is_global_zero:
        try:
            outcome = ("value", decide())
        except Exception as err:  # noqa: BLE001 -- sent to every process and raised there
            outcome = ("error", err)
    kind, value = fabric.broadcast(outcome, src=0)
    if kind == "error":
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def check_shared_directory(fabric, directory: Path, num_nodes: int) -> None:
    """Raise on every process when a machine of a run over ``num_nodes`` machines does not see a file that
    global rank 0 just wrote into ``directory`` (which global rank 0 has created)."""
    if num_nodes == 1:  # the processes of one machine see the same files
        return
    marker = directory / f".shared-check-{fabric.broadcast(secrets.token_hex(8), src=0)}"
    if fabric.is_global_zero:
        marker.write_text("rwkvtune")
    fabric.barrier()
    sees = marker.is_file()
    views = fabric.all_gather(torch.tensor([fabric.node_rank, int(sees)], device=fabric.device)).view(-1, 2)
    fabric.barrier()
    if fabric.is_global_zero:
        marker.unlink()
    blind = sorted({int(node) for node, seen in views.tolist() if not seen})
    if blind:
        raise RuntimeError(
            f"output_dir {directory} is not shared: node(s) {', '.join(map(str, blind))} do not see the file node 0 "
            "wrote there. A multi-node run keeps one set of checkpoints that every machine reads on resume (and "
            "under fsdp or deepspeed writes into): put output_dir on storage every machine mounts at the same path")


@contextmanager
def lost_process_errors(fabric, output_dir: Path, progress: TrainProgress, timeout: int) -> Iterator[None]:
    """Re-raise a failed collective of a multi-process run as :class:`LostProcessError`, naming the step,
    the last complete checkpoint and how to resume."""
    try:
        yield
    except RuntimeError as err:
        if fabric.world_size == 1 or not _communication_failed(err):
            raise
        saved = checkpoint_dirs(output_dir)
        last = "no checkpoint was saved yet; start the run again on every machine"
        if saved:
            step = json.loads((saved[-1] / TRAINER_STATE_FILE).read_text())["step"]
            last = (f"the last complete checkpoint is {saved[-1]} (step {step}); start the run again on every machine "
                    "with resume_from_checkpoint='latest'")
        raise LostProcessError(
            f"global rank {fabric.global_rank} (node {fabric.node_rank}) lost contact with the other processes during "
            f"optimizer step {progress.step + 1}: a process stopped (its machine's log says why), hung for more "
            f"than ddp_timeout={timeout} s, or the network between the machines failed. Nothing was written after "
            f"the failure: {last}") from err


def gather_rows(fabric, local: torch.Tensor) -> torch.Tensor:
    """``[n, ...]`` on every process (the same ``n``) -> ``[world * n, ...]`` in rank order, on the CPU."""
    if fabric.world_size == 1:
        return local
    gathered = fabric.all_gather(local.to(fabric.device))
    return gathered.reshape(-1, *local.shape[1:]).cpu()


def _communication_failed(err: RuntimeError) -> bool:
    """Whether ``err`` comes from the process group (torch's distributed errors; gloo raises plain
    ``RuntimeError`` naming itself, e.g. "[gloo/transport/tcp/pair.cc] Connection reset by peer")."""
    return isinstance(err, torch.distributed.DistError) or "gloo" in str(err).lower()
