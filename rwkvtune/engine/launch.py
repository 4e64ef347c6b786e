"""How the training processes were started, checked against the config before Fabric joins them.

Fabric takes ranks and the world size from what the launcher left in the environment: torchrun
(``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``), SLURM's ``srun`` (``SLURM_NTASKS``, ``SLURM_NNODES``), or, with
neither, its own launcher, which starts ``devices`` processes on this machine and, for several machines,
needs to be told where node 0 listens (``MASTER_ADDR``, ``MASTER_PORT``) and which node this is
(``NODE_RANK``). Left alone, a mismatch fails late or not at all: without ``MASTER_ADDR`` every node
listens on its own loopback address with a port of its own and waits for the others until the collective
timeout. This module turns each case into an error at start that names the setting and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rwkvtune.config.train import LoopConfig

#: What a machine of a multi-node run started by Fabric's own launcher must be told.
NODE_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


def launcher_name(environ: Mapping[str, str]) -> str:
    """``"torchrun"``, ``"slurm"`` or ``"fabric"`` (Fabric's own launcher, or one process)."""
    if "TORCHELASTIC_RUN_ID" in environ:
        return "torchrun"
    if "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return "slurm"  # Fabric's rule: an interactive allocation is not an srun launch
    return "fabric"


def check_launch(config: LoopConfig, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` when the processes the launcher started do not match ``devices x num_nodes``,
    or when a machine of a multi-node run cannot know where to meet the others."""
    environ = os.environ if environ is None else environ
    wanted = config.devices * config.num_nodes
    shape = f"num_nodes={config.num_nodes} x devices={config.devices} = {wanted} process(es)"
    launcher = launcher_name(environ)
    if launcher == "torchrun":
        world = int(environ.get("WORLD_SIZE", "1"))
        per_node = int(environ.get("LOCAL_WORLD_SIZE", str(world)))
        if world != wanted or per_node != config.devices:
            raise ValueError(f"torchrun started {world} process(es), {per_node} per node, but the config asks for "
                             f"{shape}: set num_nodes to torchrun's --nnodes and devices to its --nproc-per-node")
    elif launcher == "slurm":
        world = int(environ["SLURM_NTASKS"])
        nodes = environ.get("SLURM_NNODES")
        if world != wanted or (nodes is not None and int(nodes) != config.num_nodes):
            raise ValueError(f"srun started {world} task(s) on {nodes or '?'} node(s), but the config asks for "
                             f"{shape}: set num_nodes to --nodes and devices to --ntasks-per-node")
    elif config.num_nodes > 1 and "LOCAL_RANK" not in environ:
        # Fabric's launcher: its child processes inherit what the first process of the machine was given.
        missing = [name for name in NODE_VARIABLES if not environ.get(name)]
        if missing:
            raise ValueError(
                f"num_nodes={config.num_nodes} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                "set, so this machine cannot find the others (it would wait on its own loopback address until the "
                "timeout): launch each machine with torchrun --nnodes ... --node-rank ... --master-addr ... "
                "--master-port ... (or srun), or set MASTER_ADDR (node 0's address), MASTER_PORT and NODE_RANK "
                "(0 to num_nodes - 1) on every machine")
        node_rank = environ["NODE_RANK"]
        if not node_rank.isdigit() or int(node_rank) >= config.num_nodes:
            raise ValueError(f"NODE_RANK={node_rank!r} but num_nodes={config.num_nodes}: give each machine a "
                             f"different NODE_RANK from 0 to {config.num_nodes - 1}")
