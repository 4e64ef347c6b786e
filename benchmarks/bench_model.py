"""Forward+backward throughput of a full RWKV-7 model on CPU, with model FLOPs utilisation (MFU).

MFU counts the matmul FLOPs of the model (6 per weight per token for forward+backward, the LM head
included, the embedding lookup excluded; the WKV recurrence is reported apart) and divides the achieved
rate by the matmul rate measured in the same run with the same thread count: in the model's dtype, and
in bf16 (the machine's best rate, the target's reference).

    python benchmarks/bench_model.py                 # rwkv7-0.1b shape, ctx 512, fp32 and bf16
    python benchmarks/bench_model.py --layers 4 --width 256
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from rwkvtune.config import RWKV7Config, get_preset
from rwkvtune.model import new_model

from roofline import matmul_rate, matmul_weights_per_token


def matmul_flops_per_token(config: RWKV7Config) -> int:
    """Forward+backward matmul FLOPs per token: 6 x (weights used in a matmul)."""
    return 6 * matmul_weights_per_token(config)


def wkv_flops_per_token(config: RWKV7Config) -> int:
    """Rough forward+backward FLOPs of the WKV recurrence itself (state update and read-out)."""
    return 3 * config.n_layer * config.n_head * 6 * config.head_size**2


def time_steps(model, ids: torch.Tensor, repeats: int) -> list[float]:
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocator and kernels
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rwkv7-0.1b")
    parser.add_argument("--layers", type=int, help="override n_layer (with --width: a custom shape)")
    parser.add_argument("--width", type=int, help="override n_embd")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--grad-cp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = get_preset(args.preset)
    if args.layers or args.width:
        config = RWKV7Config(n_layer=args.layers or config.n_layer, n_embd=args.width or config.n_embd,
                             vocab_size=config.vocab_size)
    flops = matmul_flops_per_token(config)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}")
    print(f"model L{config.n_layer}-C{config.n_embd}-V{config.vocab_size}, {config.num_parameters() / 1e6:.1f}M params, "
          f"ctx {args.ctx}, batch {args.batch}, grad_cp {args.grad_cp}")
    print(f"matmul FLOPs/token (fwd+bwd) {flops / 1e9:.3f} G; WKV ~{wkv_flops_per_token(config) / 1e9:.3f} G\n")
    bf16_rate = matmul_rate(torch.bfloat16)
    print("| dtype | matmul rate, this dtype (GFLOP/s) | step (s) | tokens/s | achieved GFLOP/s "
          "| MFU vs this dtype | MFU vs bf16 matmul |")
    print("|---|---|---|---|---|---|---|")
    base = new_model(config, grad_cp=args.grad_cp).train()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.ctx + 1))
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        model = base.to(dtype)
        rate = matmul_rate(dtype)
        step = statistics.median(time_steps(model, ids, args.repeats))
        tokens = args.batch * args.ctx / step
        achieved = tokens * flops
        print(f"| {name} | {rate / 1e9:.0f} | {step:.2f} | {tokens:.0f} | {achieved / 1e9:.0f} | "
              f"{achieved / rate:.1%} | {achieved / bf16_rate:.1%} |")


if __name__ == "__main__":
    main()
