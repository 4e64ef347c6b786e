"""Parameter-efficient training of RWKV-7: LoRA (on HF peft) with RWKV's ``train_parts``, and state tuning.

    from rwkvtune.peft import LoraConfig, get_peft_model
    model = get_peft_model(AutoModel.from_pretrained(path), LoraConfig(r=64, lora_alpha=128))

Needs HF ``peft`` (a dependency of rwkvtune).
"""

from rwkvtune.model import base_model_of
from rwkvtune.peft.api import count_parameters, get_peft_model, load_adapter
from rwkvtune.peft.config import LoraConfig, StateTuningConfig
from rwkvtune.peft.lora import RWKVPeftModel
from rwkvtune.peft.state_tuning import StateTunedModel, load_state_tuning, save_state
from rwkvtune.peft.targets import AUTO_TARGETS, TRAIN_PARTS, VALID_TARGETS

__all__ = ["AUTO_TARGETS", "LoraConfig", "RWKVPeftModel", "StateTunedModel", "StateTuningConfig", "TRAIN_PARTS",
           "VALID_TARGETS", "base_model_of", "count_parameters", "get_peft_model", "load_adapter",
           "load_state_tuning", "save_state"]
