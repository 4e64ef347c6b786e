"""The training loop's machinery: optimizer groups, LR schedule, chunked loss (Fabric loop to come)."""

from rwkvtune.engine.loss import chunked_cross_entropy
from rwkvtune.engine.optim import build_optimizer, param_groups
from rwkvtune.engine.schedule import lr_at_step

__all__ = ["build_optimizer", "chunked_cross_entropy", "lr_at_step", "param_groups"]
