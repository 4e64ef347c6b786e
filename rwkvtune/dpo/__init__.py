"""DPO as pure tensor functions (TRL 1.16's definitions): the preference losses and the terms they log.

No model, no Fabric: the trainer feeds :func:`dpo_loss` the policy's per-token log-probs of the chosen and
rejected answers and the reference's summed log-probs; the tests check every loss type against TRL's own numbers
(``tests/dpo/data/dpo_vectors.json``).
"""

from rwkvtune.dpo.losses import LOSS_ALIASES, LOSS_TYPES, DPOLossSettings, DPOTerms, check_settings, dpo_loss

__all__ = ["LOSS_ALIASES", "LOSS_TYPES", "DPOLossSettings", "DPOTerms", "check_settings", "dpo_loss"]
