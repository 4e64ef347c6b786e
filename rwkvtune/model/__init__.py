"""The RWKV-7 model with official parameter names, its recurrent state and its initialisation."""

from rwkvtune.model.init import init_weights_, new_model
from rwkvtune.model.rwkv7 import RWKV7, RWKV7Output, RWKV7Scores, base_model_of
from rwkvtune.model.state import RWKVState

__all__ = ["RWKV7", "RWKV7Output", "RWKV7Scores", "RWKVState", "base_model_of", "init_weights_", "new_model"]
