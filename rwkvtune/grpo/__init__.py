"""GRPO as pure tensor functions (TRL 1.16's definitions): reward combination, advantages, per-token losses.

No model, no Fabric: the trainer feeds these functions log-probs, masks and rewards; the tests check them
against TRL's own numbers (``tests/grpo/data/grpo_vectors.json``).

Beside them, the parts of a rollout, without Fabric (a DDP gather comes in as a plain callable):
``rollout`` (the record), ``sampling`` (generate, post-process, reward, advantages), ``rollout_logprobs``
(the old and reference log-probs), ``records`` (JSONL) and ``rollout_buffer`` (the copy a checkpoint saves).
"""

from rwkvtune.grpo.advantages import RewardStats, compute_advantages
from rwkvtune.grpo.losses import LOSS_TYPES, GRPOLossSettings, grpo_loss

__all__ = ["LOSS_TYPES", "GRPOLossSettings", "RewardStats", "compute_advantages", "grpo_loss"]
