"""Lightning Fabric from a ``LoopConfig``: devices, strategy, precision (master weights stay fp32)."""

from __future__ import annotations

import atexit
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

from rwkvtune.config.train import LoopConfig
from rwkvtune.engine.launch import check_launch
from rwkvtune.model import base_model_of

#: Our precision names -> Fabric's: bf16/fp16 train with autocast over fp32 weights.
FABRIC_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def make_fabric(config: LoopConfig):
    """A launched ``lightning_fabric.Fabric`` for ``config`` (one process per device), after checking the
    processes a launcher started against the config (``engine.launch``)."""
    from lightning_fabric import Fabric

    check_launch(config)

    accelerator = {"gpu": "cuda"}.get(config.accelerator, config.accelerator)
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu" and config.precision == "fp16":
        # Fabric would silently run bf16 instead (CPU autocast has no float16 mode there).
        raise ValueError("precision='fp16' needs CUDA; on the CPU use precision='bf16' (or 'fp32')")
    fabric = Fabric(accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
                    strategy=make_strategy(config), precision=FABRIC_PRECISION[config.precision])
    fabric.launch()
    if fabric.world_size > 1:
        _destroy_process_groups_at_exit()
    return fabric


@functools.cache
def _destroy_process_groups_at_exit() -> None:
    """Destroy torch's process groups when the interpreter exits, while it is still whole.

    Fabric never destroys them. Left to interpreter finalisation, gloo's worker threads can still hold work
    that references Python objects, and the process then ends in SIGABRT ("terminate called without an
    active exception") after training succeeded: seen once in a ``.ci/run`` of ``tests/training/test_fsdp.py``
    (2 processes). A launcher such as torchrun would report that as a failed run.
    """
    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def make_strategy(config: LoopConfig):
    """Fabric's strategy for ``config.strategy``: ``"auto"`` for one process, DDP for several (with
    ``ddp_timeout``), a configured DeepSpeed strategy, or for ``"fsdp"`` PyTorch's FSDP2 through Fabric's
    ``ModelParallelStrategy`` (:func:`fsdp_strategy`).

    DeepSpeed clips gradients inside its optimizer step (Fabric's ``clip_gradients`` refuses to), so
    ``grad_clip`` goes into its config; the loop then skips its own clipping (:func:`uses_deepspeed`).
    """
    strategy, timeout = config.strategy, timedelta(seconds=config.ddp_timeout)
    if strategy == "single_device":  # not a name Fabric registers; its "auto" on one device is that strategy
        return "auto"
    if strategy == "auto" and config.devices * config.num_nodes > 1:
        strategy = "ddp"
    if strategy == "ddp":
        return registered_strategy("ddp", timeout=timeout)
    if strategy == "fsdp":
        return fsdp_strategy(config.devices * config.num_nodes, timeout=timeout)
    if strategy.startswith("deepspeed"):
        deepspeed = registered_strategy(strategy, timeout=timeout)
        deepspeed.config["gradient_clipping"] = config.grad_clip
        if strategy.endswith("_offload"):
            # Offloading wants DeepSpeed's own CPU Adam unless told otherwise; torch's fused CPU AdamW (what
            # build_optimizer makes) runs the offloaded step as fast and with RWKV-LM's parameter groups.
            deepspeed.config["zero_force_ds_cpu_optimizer"] = False
        return deepspeed
    return strategy


def registered_strategy(name: str, **settings: Any):
    """Fabric's strategy registered as ``name``, made with its registered arguments plus ``settings``."""
    from lightning_fabric.strategies import STRATEGY_REGISTRY

    entry = STRATEGY_REGISTRY[name]
    return entry["strategy"](**entry["init_params"], **settings)


def fsdp_strategy(processes: int, timeout: timedelta):
    """Fabric's ``ModelParallelStrategy`` running PyTorch's FSDP2 (``fully_shard``) over all ``processes``,
    its collectives waiting ``timeout`` for the others.

    Fabric's own FSDP strategy wraps the older ``FullyShardedDataParallel``, which needs CUDA; FSDP2 holds
    each parameter as a DTensor shard and runs on the CPU (gloo) as well. With tensor parallelism off the
    whole world is one data-parallel group. Parameters are sharded in place (``fully_shard`` swaps them
    for DTensor ones), so the optimizer is built after ``setup_module``; checkpoints are distributed
    (``state.pt`` is a directory: one file of shards per process and ``meta.pt``). Fabric's mixed
    precision is autocast over the fp32 masters, as under DDP (FSDP2's own mixed-precision policy is
    left off); ModelParallelStrategy has no fp16 mode with loss scaling (the config refuses it).
    """
    from lightning_fabric.strategies import ModelParallelStrategy

    return ModelParallelStrategy(shard_blocks_then_root, data_parallel_size=processes, tensor_parallel_size=1,
                                 timeout=timeout)


def shard_blocks_then_root(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """FSDP2 on ``model``: every block its own group, then the rest (embedding, final norm, head) the root's.

    A block's parameters are all-gathered just before its forward and freed after it, gathered again for
    its backward, and its gradient is reduce-scattered right after: memory holds one whole block at a
    time besides the shards. The last block's parameters stay gathered after its forward, since backward
    needs them first; the root keeps its own gathered too (FSDP2's default for the root). Under
    ``grad_cp`` a block's recomputation in backward runs inside its backward, while its parameters are
    gathered. Mixed precision stays Fabric's autocast, so FSDP2 computes and reduces in fp32 as DDP does.
    """
    from torch.distributed.fsdp import fully_shard

    # A block returns its token-shift states as views of its activations (x[:, -1]); FSDP2 warns that an
    # in-place op on such a view would skip its backward hook. Nothing modifies them in place (the model
    # stacks them into a new state), so the warning is only noise in every run's log.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPBlock\) returned a view tensor")
    data_parallel = mesh["data_parallel"]
    blocks = base_model_of(model).blocks
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=data_parallel, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=data_parallel)
    return model


@contextmanager
def accumulating(fabric, model, *, last: bool) -> Iterator[None]:
    """Forward and backward of one micro-batch of an accumulation window; gradients are reduced across
    processes only for the window's ``last`` micro-batch.

    Under DDP that is ``no_backward_sync`` on the others. DeepSpeed has no such switch in Fabric, and left
    alone it treats every backward as a window boundary, which loses the earlier micro-batches' gradients
    (measured: ZeRO-2 with 2 micro-batches per step drifted 1e-2 from DDP in 4 steps); its engine is
    told where the boundary is instead. Under FSDP ``no_backward_sync`` keeps each group's gradients
    unsharded until the window's last backward reduce-scatters them (reduce-scattering every micro-batch
    instead gave no lower peak RSS on rwkv7-0.1b with 2 micro-batches, 2 CPU processes, and ran ~8% slower).
    """
    if uses_deepspeed(fabric):
        fabric.strategy.model.set_gradient_accumulation_boundary(last)
        yield
    else:
        with fabric.no_backward_sync(model, enabled=not last):
            yield


def full_state_dict(fabric, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """``module``'s state dict on the CPU, every parameter whole and at master precision, on global rank 0.

    Call on every process: under DeepSpeed the other processes take part in gathering each parameter
    (ZeRO-3 keeps only a shard of it in the module; DeepSpeed's bf16/fp16 modes keep a 16-bit module with
    the fp32 masters in the optimizer) and get ``None``, as they do without DeepSpeed. Each gathered
    parameter moves to the CPU at once, so the whole model is never gathered on a device, and only rank
    0 ends up with a copy in host memory. Under FSDP every process takes part in gathering the shards
    (the fp32 masters: Fabric's mixed precision is autocast over them) and only rank 0 keeps them.
    """
    keep = fabric.is_global_zero
    if uses_fsdp(fabric):  # gathered parameter by parameter onto the CPU of rank 0; the others get {}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name: tensor.detach() for name, tensor in state.items()} if keep else None
    if not uses_deepspeed(fabric):
        return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()} if keep else None
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    state = module.state_dict()
    for name, param in module.named_parameters():
        if name not in state:
            continue
        master = safe_get_full_fp32_param(param)  # None for a frozen parameter: it has no master copy
        if master is not None:
            state[name] = master.detach().cpu() if keep else None
        elif hasattr(param, "ds_id"):  # frozen under ZeRO-3: the module holds a shard; gather it
            with deepspeed.zero.GatheredParameters([param]):
                state[name] = param.detach().cpu() if keep else None
    return {name: tensor.detach().cpu() for name, tensor in state.items()} if keep else None


def uses_deepspeed(fabric) -> bool:
    """Whether ``fabric`` runs a DeepSpeed strategy (which clips gradients itself and owns the module)."""
    from lightning_fabric.strategies import DeepSpeedStrategy

    return isinstance(fabric.strategy, DeepSpeedStrategy)


def uses_fsdp(fabric) -> bool:
    """Whether ``fabric`` runs FSDP2 (``strategy="fsdp"``): parameters are DTensor shards, the optimizer
    is built on them after ``setup_module``, and checkpoints are directories of shards."""
    from lightning_fabric.strategies import ModelParallelStrategy

    return isinstance(fabric.strategy, ModelParallelStrategy)


def shards_module(fabric) -> bool:
    """Whether the strategy takes the given module over for good (DeepSpeed's engine, FSDP's in-place
    sharding): after training it is not usable as the model it was, and ``final/`` is what to load."""
    return uses_deepspeed(fabric) or uses_fsdp(fabric)
