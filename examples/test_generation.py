"""Generate a few chat replies with the rwkvtune engine and report the speed.

Settings come from environment variables (all optional):

    MODEL_PATH       hub directory or .pth file; unset: a tiny random model is built (no downloads)
    DTYPE            fp32 | bf16 | fp16 (default fp32)        DEVICE       cpu | cuda (default cpu)
    MAX_NEW_TOKENS   default 64                                TEMPERATURE  default 1.0 (0 = greedy)
    TOP_P            default 0.9                               TOP_K        default 0 (off)
    NUM_SAMPLES      completions per prompt (default 2)        SEED         default 0
    THREADS          torch CPU threads (default 2)

    MODEL_PATH=models/rwkv7-0.1b TEMPERATURE=0.7 python examples/test_generation.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from example_setup import env  # noqa: E402

from rwkvtune import AutoModel, AutoTokenizer  # noqa: E402
from rwkvtune.config import RWKV7Config  # noqa: E402
from rwkvtune.generation import SamplingParams, generate, stream_text  # noqa: E402
from rwkvtune.tokenizer import WorldTokenizer  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recurrent neural networks in one sentence.",
]


def main() -> None:
    torch.set_num_threads(env("THREADS", 2, int))
    model_path = env("MODEL_PATH", None)
    device = env("DEVICE", "cpu")
    if model_path:
        model = AutoModel.from_pretrained(model_path, dtype=env("DTYPE", "fp32"), device=device)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        print(f"model: {model_path}")
    else:
        torch.manual_seed(0)
        tokenizer = WorldTokenizer.default()
        config = RWKV7Config(n_layer=4, n_embd=256, vocab_size=tokenizer.vocab_size)
        model = AutoModel.from_config(config).to(device=device)
        print("MODEL_PATH is not set: using a tiny random RWKV-7 (L4-C256), so the text is noise; "
              "set MODEL_PATH=<hub dir> for a real model")
    params = SamplingParams(
        max_new_tokens=env("MAX_NEW_TOKENS", 64, int), temperature=env("TEMPERATURE", 1.0, float),
        top_p=env("TOP_P", 0.9, float), top_k=env("TOP_K", 0, int), n=env("NUM_SAMPLES", 2, int),
        seed=env("SEED", 0, int),
    )
    print(f"sampling: {params}\n")

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in QUESTIONS]
    start = time.perf_counter()
    completions = generate(model, prompts, params, tokenizer)
    elapsed = time.perf_counter() - start
    for completion in completions:
        print(f"[prompt {completion.prompt_index}, sample {completion.sample_index}, "
              f"{len(completion.token_ids)} tokens, {completion.finish_reason}] {QUESTIONS[completion.prompt_index]}")
        print(f"  -> {completion.text.strip()!r}")
    tokens = sum(len(c.token_ids) for c in completions)
    print(f"\n{len(completions)} completions, {tokens} tokens in {elapsed:.2f} s: {tokens / elapsed:.1f} tokens/s "
          "(prefill included)")

    print("\nstreaming one reply:", end=" ", flush=True)
    for piece in stream_text(model, prompts[0], dataclasses.replace(params, n=1), tokenizer):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
