"""What the GPU check runs (sizes, steps, devices) and the pieces its sections share.

:class:`Plan` holds every size the sections use, for the real run on a GPU or for ``--dry-run``: tiny
models on the CPU, the chunked WKV7 backend standing in for fla, so that every code path but the CUDA-only
ones runs here in seconds. :class:`Record` is a section's results, written to disk after every change so
that a section killed at its time limit keeps what it had measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rwkvtune.config import RWKV7Config, get_preset
from rwkvtune.model import RWKV7


class Skipped(Exception):
    """A section that cannot run here (e.g. it needs CUDA); the message says why."""


@dataclass(frozen=True)
class Plan:
    """Sizes and settings of one run of the check.

    Attributes:
        dry_run: tiny shapes on the CPU (the check of the check), else the issue's shapes on CUDA.
        device: where models run.
        wkv_backend: the WKV7 backend under test ("fla" on CUDA; "chunked" stands in on a dry run).
        matmul_rate: bf16 matmul FLOP/s measured by the ``env`` section (0: not measured), for MFU.
        shapes: name -> architecture of each model shape.
        ctx: tokens per row of the SFT and LoRA steps.
        train_steps: optimizer steps per training section (the first, with kernel compilation, untimed).
        sft: shape -> (micro_bsz, grad_cp) for its SFT section.
        lora: (shape, micro_bsz, grad_cp, rank) of the LoRA section.
        infctx: (shape, ctx, chunk_ctx) of the infinite-context section.
        decode_batches: concurrent sequences measured in the decode sections.
        decode_steps: measured decode steps per batch size.
        runtime_strategies: ``rwkv`` runtime strategies raced at one sequence.
        numerics: (B, T, H, N) of the WKV7 numerical check.
        speed: (B, T, H, N) of the WKV7 forward+backward timing.
    """

    dry_run: bool
    device: torch.device
    wkv_backend: str
    matmul_rate: float = 0.0
    shapes: dict[str, RWKV7Config] = field(default_factory=dict)
    ctx: int = 4096
    train_steps: int = 6
    sft: dict[str, tuple[int, int]] = field(default_factory=dict)
    lora: tuple[str, int, int, int] = ("rwkv7-1.5b", 4, 1, 64)
    infctx: tuple[str, int, int] = ("rwkv7-0.1b", 65536, 4096)
    decode_batches: tuple[int, ...] = (1, 64, 256, 1024)
    decode_steps: int = 32
    runtime_strategies: tuple[str, ...] = ("cuda fp16", "cuda bf16")
    numerics: tuple[int, int, int, int] = (2, 1024, 4, 64)
    speed: tuple[int, int, int, int] = (8, 4096, 12, 64)

    @classmethod
    def make(cls, *, dry_run: bool, matmul_rate: float = 0.0) -> Plan:
        if not dry_run:
            return cls(dry_run=False, device=torch.device("cuda"), wkv_backend="fla", matmul_rate=matmul_rate,
                       shapes={name: get_preset(name) for name in ("rwkv7-0.1b", "rwkv7-1.5b")},
                       # 1.5b without recomputation would hold ~24 layers x 16k tokens of activations: grad_cp on,
                       # as the README's SFT defaults have it (its MFU counts only the 6N FLOPs, not the rerun).
                       sft={"rwkv7-0.1b": (8, 0), "rwkv7-1.5b": (4, 1)})
        tiny = {"rwkv7-0.1b": RWKV7Config(n_layer=2, n_embd=64, vocab_size=512, head_size=32),
                "rwkv7-1.5b": RWKV7Config(n_layer=2, n_embd=128, vocab_size=512, head_size=32)}
        return cls(dry_run=True, device=torch.device("cpu"), wkv_backend="chunked", matmul_rate=matmul_rate,
                   shapes=tiny, ctx=64, train_steps=2, sft={"rwkv7-0.1b": (2, 0), "rwkv7-1.5b": (2, 1)},
                   lora=("rwkv7-1.5b", 2, 1, 8), infctx=("rwkv7-0.1b", 256, 64), decode_batches=(1, 4),
                   decode_steps=4, runtime_strategies=("cpu fp32",), numerics=(1, 40, 2, 32), speed=(1, 128, 2, 32))

    @property
    def accelerator(self) -> str:
        return "cuda" if self.device.type == "cuda" else "cpu"


class Record:
    """One section's results: ``data`` (JSON values) and ``lines`` (markdown for the summary), rewritten
    to ``path`` after every change."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.data: dict[str, Any] = {}
        self.lines: list[str] = []

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._flush()

    def line(self, text: str) -> None:
        """A line of the readable summary (printed as it comes, for the log)."""
        self.lines.append(text)
        print(text, flush=True)
        self._flush()

    def _flush(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"data": self.data, "lines": self.lines}, default=str))
            tmp.replace(self.path)


def random_model(config: RWKV7Config, *, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 wkv_backend: str = "auto") -> RWKV7:
    """An ``RWKV7`` with random weights made on ``device`` (a 1.5B model's init on the host takes minutes):
    scales that keep activations and the loss finite (unit norms, ``1/sqrt(fan_in)`` matrices, decays
    spread over RWKV-7's range), not a trained model's statistics: speed does not depend on the values."""
    with torch.device("meta"):
        model = RWKV7(config, wkv_backend=wkv_backend)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device=device)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device)

    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            shape = tensor.shape
            if leaf == "bias":
                value = torch.zeros(shape, device=device)
            elif name.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
                value = torch.ones(shape, device=device)
            elif name == "emb.weight":
                value = randn(shape)
            elif leaf == "weight":  # linear layers [out, in]
                value = randn(shape) / shape[1] ** 0.5
            elif leaf in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
                value = rand(shape)
            elif leaf == "w0":
                value = -5 + 7 * rand(shape)
            elif leaf in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
                value = 0.3 * randn(shape) / min(shape) ** 0.25
            elif leaf in ("a0", "v0"):
                value = randn(shape)
            elif leaf in ("k_k", "k_a"):
                value = 0.5 + rand(shape)
            elif leaf == "r_k":
                value = 0.5 * randn(shape)
            else:
                raise ValueError(f"random_model has no rule for {name}")
            tensor.copy_(value)
    return model.to(dtype)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA measure the work, not its launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn, repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls of ``fn()`` after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last reset, in GiB (``None`` on the CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
