"""User-facing configs and trainers."""

from rwkvtune.config.dpo import DPOConfig
from rwkvtune.config.grpo import GRPOConfig
from rwkvtune.config.train import PretrainConfig, SFTConfig
from rwkvtune.training.dpo import DPOTrainer
from rwkvtune.training.grpo import GRPOTrainer
from rwkvtune.training.trainers import PretrainTrainer, SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "GRPOConfig", "GRPOTrainer", "PretrainConfig", "PretrainTrainer", "SFTConfig",
           "SFTTrainer"]
