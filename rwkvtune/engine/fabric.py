"""Lightning Fabric from a ``LoopConfig``: devices, strategy, precision (master weights stay fp32)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rwkvtune.config.train import LoopConfig

#: Our precision names -> Fabric's: bf16/fp16 train with autocast over fp32 weights.
FABRIC_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def make_fabric(config: LoopConfig):
    """A launched ``lightning_fabric.Fabric`` for ``config`` (one process per device)."""
    from lightning_fabric import Fabric

    accelerator = {"gpu": "cuda"}.get(config.accelerator, config.accelerator)
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu" and config.precision == "fp16":
        # Fabric would silently run bf16 instead (CPU autocast has no float16 mode there).
        raise ValueError("precision='fp16' needs CUDA; on the CPU use precision='bf16' (or 'fp32')")
    fabric = Fabric(accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
                    strategy=make_strategy(config), precision=FABRIC_PRECISION[config.precision])
    fabric.launch()
    return fabric


def make_strategy(config: LoopConfig):
    """Fabric's strategy for ``config.strategy``: a name, or a configured DeepSpeed strategy.

    DeepSpeed clips gradients inside its optimizer step (Fabric's ``clip_gradients`` refuses to), so
    ``grad_clip`` goes into its config; the loop then skips its own clipping (:func:`uses_deepspeed`).
    """
    strategy = config.strategy
    if strategy == "auto" and config.devices * config.num_nodes > 1:
        return "ddp"
    if strategy.startswith("deepspeed"):
        from lightning_fabric.strategies import STRATEGY_REGISTRY

        deepspeed = STRATEGY_REGISTRY.get(strategy)
        deepspeed.config["gradient_clipping"] = config.grad_clip
        if strategy.endswith("_offload"):
            # Offloading wants DeepSpeed's own CPU Adam unless told otherwise; torch's fused CPU AdamW (what
            # build_optimizer makes) runs the offloaded step as fast and with RWKV-LM's parameter groups.
            deepspeed.config["zero_force_ds_cpu_optimizer"] = False
        return deepspeed
    return strategy


@contextmanager
def accumulating(fabric, model, *, last: bool) -> Iterator[None]:
    """Forward and backward of one micro-batch of an accumulation window; gradients are reduced across
    processes only for the window's ``last`` micro-batch.

    Under DDP that is ``no_backward_sync`` on the others. DeepSpeed has no such switch in Fabric, and left
    alone it treats every backward as a window boundary, which loses the earlier micro-batches' gradients
    (measured: ZeRO-2 with 2 micro-batches per step drifted 1e-2 from DDP in 4 steps); its engine is
    told where the boundary is instead.
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
    0 ends up with a copy in host memory.
    """
    keep = fabric.is_global_zero
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
