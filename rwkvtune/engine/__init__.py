"""The training loop's machinery: Fabric set-up, optimizer groups, LR schedule, data order, checkpoints."""

from rwkvtune.engine.optim import build_optimizer, param_groups
from rwkvtune.engine.schedule import lr_at_step

__all__ = ["build_optimizer", "lr_at_step", "param_groups"]
