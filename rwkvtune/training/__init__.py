"""User-facing configs and trainers."""

from rwkvtune.config.train import PretrainConfig, SFTConfig
from rwkvtune.training.trainers import PretrainTrainer, SFTTrainer

__all__ = ["PretrainConfig", "PretrainTrainer", "SFTConfig", "SFTTrainer"]
