"""Lightning Fabric from a ``TrainConfig``: devices, strategy, precision (master weights stay fp32)."""

from __future__ import annotations

import torch

from rwkvtune.config.train import TrainConfig

#: Our precision names -> Fabric's: bf16/fp16 train with autocast over fp32 weights.
FABRIC_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def make_fabric(config: TrainConfig):
    """A launched ``lightning_fabric.Fabric`` for ``config`` (one process per device)."""
    from lightning_fabric import Fabric

    accelerator = {"gpu": "cuda"}.get(config.accelerator, config.accelerator)
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    strategy = config.strategy
    if strategy == "auto" and config.devices * config.num_nodes > 1:
        strategy = "ddp"
    fabric = Fabric(accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
                    strategy=strategy, precision=FABRIC_PRECISION[config.precision])
    fabric.launch()
    return fabric
