"""Hub directories: ``AutoModel`` / ``AutoTokenizer`` loading, saving, weight files."""

from rwkvtune.hub.auto import AutoModel, AutoTokenizer, PretrainedRWKV7, load_model, save_pretrained
from rwkvtune.hub.tokenizer_files import load_tokenizer, save_tokenizer
from rwkvtune.hub.weights import load_weights, save_weights

__all__ = ["AutoModel", "AutoTokenizer", "PretrainedRWKV7", "load_model", "load_tokenizer", "load_weights",
           "save_pretrained", "save_tokenizer", "save_weights"]
