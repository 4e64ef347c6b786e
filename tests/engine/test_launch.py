"""Launches that do not match the config are named before Fabric starts or joins any process."""

from __future__ import annotations

import pytest

from rwkvtune.engine.launch import check_launch, launcher_name
from rwkvtune.training import SFTConfig

TORCHRUN = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "3"}
SRUN = {"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "3"}
FABRIC = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"}


def config(**fields) -> SFTConfig:
    return SFTConfig(**fields)


def test_each_launcher_is_recognised():
    assert launcher_name(TORCHRUN) == "torchrun"
    assert launcher_name(SRUN) == "slurm"
    assert launcher_name({**SRUN, "SLURM_JOB_NAME": "interactive"}) == "fabric"  # an salloc shell, not srun
    assert launcher_name({}) == "fabric"


@pytest.mark.parametrize("environ", [TORCHRUN, SRUN, FABRIC])
def test_a_matching_launch_passes(environ):
    check_launch(config(num_nodes=2, devices=2), environ)


def test_torchrun_with_another_shape():
    for fields in ({"num_nodes": 1, "devices": 4}, {"num_nodes": 4, "devices": 1}, {"num_nodes": 2, "devices": 1}):
        with pytest.raises(ValueError, match=r"torchrun started 4 process\(es\), 2 per node, but the config asks "
                                             r"for num_nodes=\d x devices=\d .*--nnodes .*--nproc-per-node"):
            check_launch(config(**fields), TORCHRUN)


def test_srun_with_another_shape():
    with pytest.raises(ValueError, match=r"srun started 4 task\(s\) on 2 node\(s\), but the config asks for "
                                         r"num_nodes=1 x devices=4"):
        check_launch(config(num_nodes=1, devices=4), SRUN)


def test_several_machines_without_a_meeting_point():
    with pytest.raises(ValueError, match="num_nodes=2 but MASTER_ADDR is not set.*torchrun --nnodes"):
        check_launch(config(num_nodes=2), {k: v for k, v in FABRIC.items() if k != "MASTER_ADDR"})
    with pytest.raises(ValueError, match="num_nodes=2 but MASTER_ADDR, MASTER_PORT, NODE_RANK are not set"):
        check_launch(config(num_nodes=2), {})
    with pytest.raises(ValueError, match="NODE_RANK='2' but num_nodes=2: give each machine a different NODE_RANK "
                                         "from 0 to 1"):
        check_launch(config(num_nodes=2), {**FABRIC, "NODE_RANK": "2"})
    check_launch(config(num_nodes=1), {})  # one machine needs none of it
    check_launch(config(num_nodes=2), {"LOCAL_RANK": "1"})  # a child process of Fabric's launcher
