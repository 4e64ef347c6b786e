"""Several machines, emulated on the loopback address: two "nodes" of one process each, started the usual
ways (two torchrun launches with node ranks 0 and 1; srun's environment; Fabric's own launcher told
MASTER_ADDR / MASTER_PORT / NODE_RANK), train what one process trains; bad launches are named at start; a
node lost mid-run stops the other with a clear error and the last checkpoint resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rwkvtune import AutoModel

RUN = Path(__file__).parent / "launched_run.py"
TESTS = Path(__file__).parent.parent
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This process's environment without what a launcher or an earlier Fabric run left in it."""
    drop = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
            "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS / "training")]), "OMP_NUM_THREADS": "1"}


def run_args(output_dir: Path, trainer: str, overrides: dict, fail: str | None) -> list[str]:
    return [str(RUN), str(output_dir), trainer, json.dumps(overrides)] + ([fail] if fail else [])


def two_nodes(launcher: str, output_dir: Path, trainer: str, **options) -> list[subprocess.CompletedProcess]:
    """Run machine 0 and machine 1 of a 2-node run (see :func:`start_two_nodes`); wait for both."""
    return [finished(p) for p in start_two_nodes(launcher, output_dir, trainer, **options)]


def finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_two_nodes(launcher: str, output_dir: Path, trainer: str, *, fail: str | None = None,
                    cwds: tuple[Path, Path] | None = None, **overrides) -> list[subprocess.Popen]:
    """Start machine 0 and machine 1 of a 2-node run with ``launcher`` (in ``cwds``, if given; ``fail``: see
    ``launched_run.py``), each in a session of its own."""
    port, env = free_port(), clean_env()
    overrides = {"num_nodes": 2, "devices": 1, **overrides}
    procs = []
    for node in (0, 1):
        args = run_args(output_dir, trainer, overrides, fail)
        if launcher == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                       "--nproc-per-node", str(overrides["devices"]),
                       "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), *args]
            node_env = env
        elif launcher == "slurm":  # what srun gives each task of `srun --nodes 2 --ntasks-per-node 1`
            command = [sys.executable, *args]
            node_env = {**env, "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1",
                        "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node),
                        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "127.0.0.1",
                        "MASTER_PORT": str(port)}
        else:  # Fabric's own launcher on each machine
            command = [sys.executable, *args]
            node_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node)}
        procs.append(subprocess.Popen(command, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=cwds[node] if cwds else None, start_new_session=True))
    return procs


def one_machine(output_dir: Path, trainer: str, **overrides) -> subprocess.CompletedProcess:
    """One machine, Fabric's own launcher: ``devices`` processes."""
    return subprocess.run([sys.executable, *run_args(output_dir, trainer, overrides, None)], env=clean_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def succeeded(*results: subprocess.CompletedProcess) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return AutoModel.from_pretrained(output_dir / "final").state_dict()


def assert_same_training(run: Path, reference: Path, keys: tuple[str, ...] = ("loss",)) -> None:
    """Losses within 1e-5 and final weights within 1e-6 (gloo sums gradients in another order)."""
    got, expected = metrics(run), metrics(reference)
    assert [m["step"] for m in got] == [m["step"] for m in expected]
    for key in keys:
        assert [m[key] for m in got] == pytest.approx([m[key] for m in expected], abs=1e-5), key
    w_run, w_ref = final_weights(run), final_weights(reference)
    for key in w_ref:
        torch.testing.assert_close(w_run[key], w_ref[key], atol=1e-6, rtol=0, msg=key)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    """The 1-process runs every multi-process run is compared with."""
    root = tmp_path_factory.mktemp("one_process")
    succeeded(one_machine(root / "sft", "sft", save_every_n_batches=2), one_machine(root / "grpo", "grpo"))
    return {"sft": root / "sft", "grpo": root / "grpo"}


@pytest.mark.parametrize("launcher", ["torchrun", "slurm", "fabric"])
def test_two_nodes_train_what_one_process_trains(launcher, one_process, tmp_path):
    out = tmp_path / "two_nodes"
    succeeded(*two_nodes(launcher, out, "sft", save_every_n_batches=2))
    assert_same_training(out, one_process["sft"])
    # written once, by global rank 0: one record per step, whole checkpoints, nothing half-written left
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == ["batch4", "epoch1", "final", "metrics.jsonl"]


def test_two_nodes_equal_one_node_of_two_processes(one_process, tmp_path):
    succeeded(one_machine(tmp_path / "one_node", "sft", devices=2, save_every_n_batches=2))
    succeeded(*two_nodes("torchrun", tmp_path / "two_nodes", "sft", save_every_n_batches=2))
    assert_same_training(tmp_path / "two_nodes", tmp_path / "one_node")
    assert_same_training(tmp_path / "one_node", one_process["sft"])


def test_two_nodes_of_two_processes_train_what_one_process_trains(one_process, tmp_path):
    succeeded(*two_nodes("torchrun", tmp_path / "two_by_two", "sft", devices=2, save_every_n_batches=2))
    assert_same_training(tmp_path / "two_by_two", one_process["sft"])


def test_grpo_on_two_nodes_trains_what_one_node_and_one_process_train(one_process, tmp_path):
    succeeded(*two_nodes("torchrun", tmp_path / "two_nodes", "grpo"))
    succeeded(one_machine(tmp_path / "one_node", "grpo", devices=2))
    for reference in (tmp_path / "one_node", one_process["grpo"]):
        assert_same_training(tmp_path / "two_nodes", reference, keys=("loss", "reward", "reward_std"))


def test_a_lost_node_stops_the_other_and_the_run_resumes_exactly(one_process, tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    node0, node1 = two_nodes("torchrun", out, "sft", fail="SIGKILL:3", save_every_n_batches=1, ddp_timeout=60)
    assert time.monotonic() - started < 120  # the survivor did not wait for anything like ddp_timeout
    assert node1.returncode != 0 and node0.returncode != 0
    assert "lost contact with the other processes during optimizer step 3" in node0.stderr, node0.stderr[-3000:]
    assert f"the last complete checkpoint is {out / 'batch2'}" in node0.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["batch1", "batch2"]  # intact, nothing half-made
    succeeded(*two_nodes("torchrun", out, "sft", save_every_n_batches=1, resume_from_checkpoint="latest"))
    # the first run logged steps 1-2, the resumed one 3-4: together, the uninterrupted run
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]
    assert_same_training(out, one_process["sft"])


def test_a_hung_node_stops_the_other_after_ddp_timeout(tmp_path):
    started = time.monotonic()
    node0, node1 = start_two_nodes("torchrun", tmp_path / "run", "sft", fail="SIGSTOP:2", ddp_timeout=5)
    try:
        survivor = finished(node0)
        waited = time.monotonic() - started
    finally:
        for pid in (int((tmp_path / "run.rank1.pid").read_text()), node1.pid):  # the stopped process, its torchrun
            os.kill(pid, signal.SIGKILL)
        node1.communicate()
    assert survivor.returncode != 0
    assert "lost contact with the other processes during optimizer step 2" in survivor.stderr, survivor.stderr[-3000:]
    assert "hung for more than ddp_timeout=5 s" in survivor.stderr
    assert "no checkpoint was saved yet" in survivor.stderr
    assert waited < 60  # torch's default collective timeout is 30 minutes


def test_launches_that_do_not_match_the_config_are_named_at_start(tmp_path):
    results = two_nodes("torchrun", tmp_path / "x", "sft", num_nodes=1)
    for result in results:
        assert result.returncode != 0
        assert "torchrun started 2 process(es), 1 per node, but the config asks for num_nodes=1 x devices=1" \
               in result.stderr, result.stderr[-3000:]
    lonely = one_machine(tmp_path / "y", "sft", num_nodes=2)  # no launcher, no MASTER_ADDR: would wait forever
    assert lonely.returncode != 0
    assert "num_nodes=2 but MASTER_ADDR, MASTER_PORT, NODE_RANK are not set" in lonely.stderr, lonely.stderr[-3000:]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_every_process_stops_on_what_rank_zero_finds(tmp_path):
    """Errors found by global rank 0 alone reach every process at once, instead of leaving them waiting."""
    earlier = tmp_path / "earlier"
    (earlier / "batch2").mkdir(parents=True)
    refused = one_machine(earlier, "sft", devices=2)
    assert refused.returncode != 0 and "holds an earlier run (batch2)" in refused.stderr, refused.stderr[-3000:]
    # a relative output_dir from two working directories: two machines, each with its own disk
    cwds = (tmp_path / "machine0", tmp_path / "machine1")
    for cwd in cwds:
        cwd.mkdir()
    for result in two_nodes("torchrun", Path("run"), "sft", cwds=cwds):
        assert result.returncode != 0
        assert "output_dir run is not shared: node(s) 1 do not see the file node 0 wrote there" in result.stderr, \
            result.stderr[-3000:]
    assert [p.name for p in (cwds[0] / "run").iterdir()] == []  # the check leaves nothing behind


EXIT_CHECK = """
import atexit, os, sys
import torch
from pathlib import Path
out = Path(sys.argv[1])
# registered first, so it runs after the handlers registered later (atexit runs them last-in, first-out)
atexit.register(lambda: (out / f"rank{os.environ.get('LOCAL_RANK', '0')}").write_text(
    str(torch.distributed.is_initialized())))
from rwkvtune.engine.fabric import make_fabric
from rwkvtune.training import SFTConfig
fabric = make_fabric(SFTConfig(devices=2, accelerator="cpu", precision="fp32"))
fabric.barrier()
"""


def test_process_groups_are_destroyed_before_the_interpreter_exits(tmp_path):
    """Left to interpreter finalisation, gloo's threads can abort a process that trained fine (SIGABRT)."""
    script = tmp_path / "exit_check.py"
    script.write_text(EXIT_CHECK)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], env=clean_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
