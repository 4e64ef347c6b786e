"""GRPO as pure tensor functions (TRL 1.16's definitions): reward combination, advantages, per-token losses.

No model, no Fabric: the trainer feeds these functions log-probs, masks and rewards; the tests check them
against TRL's own numbers (``tests/grpo/data/grpo_vectors.json``).
"""

from rwkvtune.grpo.advantages import RewardStats, compute_advantages
from rwkvtune.grpo.losses import LOSS_TYPES, GRPOLossSettings, grpo_loss

__all__ = ["LOSS_TYPES", "GRPOLossSettings", "RewardStats", "compute_advantages", "grpo_loss"]
