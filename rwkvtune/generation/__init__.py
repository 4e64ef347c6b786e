"""Generation: sampling parameters and a batched RNN engine (chunked prefill, group expansion, decode).

    from rwkvtune.generation import SamplingParams, generate
    completions = generate(model, ["User: hi\n\nAssistant:"], SamplingParams(n=4), tokenizer)
"""

from rwkvtune.generation.api import chat, default_params, generate, stream_text
from rwkvtune.generation.engine import GenerationEngine
from rwkvtune.generation.params import SamplingParams
from rwkvtune.generation.results import Completion, PaddedCompletions, pad_completions

__all__ = ["Completion", "GenerationEngine", "PaddedCompletions", "SamplingParams", "chat", "default_params",
           "generate", "pad_completions", "stream_text"]
