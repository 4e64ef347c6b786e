"""User-facing configs and trainers."""

from rwkvtune.config.grpo import GRPOConfig
from rwkvtune.config.train import PretrainConfig, SFTConfig
from rwkvtune.training.grpo import GRPOTrainer
from rwkvtune.training.trainers import PretrainTrainer, SFTTrainer

__all__ = ["GRPOConfig", "GRPOTrainer", "PretrainConfig", "PretrainTrainer", "SFTConfig", "SFTTrainer"]
