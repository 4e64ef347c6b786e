"""Training data: dataset formats, loss masks, packing, batching and binidx corpora.

Typical use::

    examples = prepare_examples(dataset, tokenizer=tokenizer, ctx_len=2048)   # list-like of rows
    batch = collate([examples[i] for i in indices])                           # [B, T] tensors
    windows = BinidxWindows("data/minipile")                                  # large pretraining corpora
"""

from rwkvtune.data.binidx import BinidxFile, BinidxWindows, write_binidx
from rwkvtune.data.checks import IGNORE_INDEX
from rwkvtune.data.collate import collate
from rwkvtune.data.examples import END_OF_DOCUMENT, prepare_examples
from rwkvtune.data.formats import FORMATS, detect_format
from rwkvtune.data.packing import num_windows, window_bounds
from rwkvtune.data.prepared import PreparedData, PrepareStats

__all__ = [
    "END_OF_DOCUMENT", "FORMATS", "IGNORE_INDEX", "BinidxFile", "BinidxWindows", "PrepareStats", "PreparedData",
    "collate", "detect_format", "num_windows", "prepare_examples", "window_bounds", "write_binidx",
]
