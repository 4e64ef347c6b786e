"""Build a small RWKV-7, save it as a hub directory, reload it and check it against the `rwkv` runtime.

Runs on a laptop CPU in seconds, with no downloads:

    python examples/model_quickstart.py --output-dir runs/tiny-rwkv7

The model is freshly initialised (RWKV-LM's init), so its text is noise; the point is the round trip:
our weights are the official format, so the reference runtime reads them and gives the same logits.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from rwkvtune import AutoModel, AutoTokenizer
from rwkvtune.config import RWKV7Config
from rwkvtune.tokenizer import WorldTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/tiny-rwkv7")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tokenizer = WorldTokenizer.default()
    config = RWKV7Config(n_layer=args.layers, n_embd=args.width, vocab_size=tokenizer.vocab_size)
    model = AutoModel.from_config(config, ctx_len=512)
    out = Path(args.output_dir)
    model.save_pretrained(out, tokenizer=tokenizer)
    print(f"saved a {config.num_parameters() / 1e6:.1f}M-parameter RWKV-7 to {out}/: "
          + ", ".join(sorted(p.name for p in out.iterdir())))

    model = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello, RWKV!"}], add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    print(f"prompt {prompt!r} -> {len(ids)} tokens, logits {tuple(logits.shape)}")

    try:
        os.environ.setdefault("RWKV_V7_ON", "1")
        from rwkv.model import RWKV
    except ImportError:
        print("(pip install rwkv==0.8.32 to compare with the reference runtime)")
        return
    reference = RWKV(model=str(out / "model"), strategy="cpu fp32")
    expected, _ = reference.forward(ids, None, full_output=True)
    print(f"max |logit difference| vs the rwkv runtime: {(logits - expected).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
