"""GPU check sections about training: ``loss_match``, ``syncs``, ``sft_*``, ``lora``, ``infctx``.

Every section trains through ``SFTTrainer``, as a user does, on rows of random tokens, with
``logging_steps=1`` so that ``metrics.jsonl`` has each step's loss and tokens/s. The first step compiles
and autotunes the kernels and is left out of every rate (the median of the later steps is reported).
The final model is not written (a 1.5B model's ``.pth`` takes seconds to save, and is not what is measured).

``loss_match`` tolerances, relative to the CPU float32 loss of the same step:

* CUDA float32: 2e-3. fla computes in float32 but may take tf32 matmuls (roundoff ~5e-4), and the
  difference then compounds over the optimizer steps.
* CUDA bf16 (autocast): 3e-2. Every matmul operand is rounded to bf16 (roundoff 2^-9 ~ 2e-3); a loss
  averages the errors of thousands of tokens but the weights drift apart step by step. The CPU's own
  bf16-vs-fp32 difference on the same steps is recorded beside it as the yardstick.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import linecache
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from gpu_check_plan import Plan, Record, Skipped, peak_memory_gib, random_model, sync
from roofline import matmul_weights_per_token

import rwkvtune.engine.loop as loop_module
import rwkvtune.training.base as trainer_base
from rwkvtune.config import RWKV7Config
from rwkvtune.peft import LoraConfig, get_peft_model
from rwkvtune.training import SFTConfig, SFTTrainer

LOSS_TOLERANCE = {"cuda fp32": 2e-3, "cuda bf16": 3e-2}
TINY = RWKV7Config(n_layer=2, n_embd=128, vocab_size=1024, head_size=64)


def random_rows(count: int, ctx: int, vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, vocab, (ctx,), generator=gen).tolist()} for _ in range(count)]


@contextlib.contextmanager
def no_final_save():
    """The trainer skips writing ``final/`` (full fine-tuning gathers nothing, so saves nothing)."""
    original = trainer_base.full_state_dict
    trainer_base.full_state_dict = lambda fabric, module: None
    try:
        yield
    finally:
        trainer_base.full_state_dict = original


def train(model, rows: list[dict[str, Any]], *, accelerator: str, **settings: Any) -> list[dict[str, Any]]:
    """``SFTTrainer(model, ...).train()`` over ``rows`` (one epoch); returns the per-step metric records."""
    with tempfile.TemporaryDirectory() as out, no_final_save():
        args = SFTConfig(**{"epoch_count": 1, "logging_steps": 1, "warmup_steps": 0, "lr_schedule": "constant",
                            "lr_init": 1e-4, "output_dir": out, "epoch_save": 0, "accelerator": accelerator,
                            "report_to": "", **settings})
        SFTTrainer(model, args, train_dataset=rows).train()
        return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def loss_match(plan: Plan, record: Record) -> None:
    """The same steps of a tiny model on the CPU (float32 and bf16) and on the device (float32 and bf16)."""
    base = random_model(TINY, device=torch.device("cpu"), dtype=torch.float32, seed=3)
    ctx = 256 if plan.device.type == "cuda" else 64
    rows = random_rows(8, ctx, TINY.vocab_size, seed=4)
    settings = {"ctx_len": ctx, "micro_bsz": 2, "grad_cp": 0, "lr_init": 1e-3}
    runs = [("cpu fp32", "cpu", "fp32"), ("cpu bf16", "cpu", "bf16")]
    runs += [("cuda fp32", "cuda", "fp32"), ("cuda bf16", "cuda", "bf16")] if plan.device.type == "cuda" else []
    losses = {}
    for name, accelerator, precision in runs:
        model = copy.deepcopy(base).to(accelerator)
        losses[name] = [r["loss"] for r in train(model, rows, accelerator=accelerator, precision=precision,
                                                 **settings)]
        record.set("losses", losses)
    reference = losses["cpu fp32"]
    record.line(f"tiny L{TINY.n_layer}-C{TINY.n_embd}-V{TINY.vocab_size}, 4 steps of 2 x {ctx} tokens; losses "
                f"(CPU fp32): {', '.join(f'{x:.4f}' for x in reference)}")
    failures = []
    for name, values in losses.items():
        if name == "cpu fp32":
            continue
        worst = max(abs(a - b) / abs(b) for a, b in zip(values, reference))
        tolerance = LOSS_TOLERANCE.get(name)
        verdict = "yardstick" if tolerance is None else ("ok" if worst <= tolerance else "EXCEEDED")
        record.line(f"- {name}: {', '.join(f'{x:.4f}' for x in values)}; worst relative difference {worst:.1e}"
                    + (f" (tolerance {tolerance:.0e}: {verdict})" if tolerance else " (yardstick)"))
        if tolerance is not None and worst > tolerance:
            failures.append(f"{name} {worst:.1e} > {tolerance:.0e}")
    if plan.device.type != "cuda":
        record.line("- cuda fp32 / bf16: skipped: no CUDA (the CPU rows ran the code path)")
    if failures:
        raise AssertionError("losses differ from the CPU: " + "; ".join(failures))


def syncs(plan: Plan, record: Record) -> None:
    """Host-device synchronisations inside training steps (after the first), by source line."""
    if plan.device.type != "cuda":
        raise Skipped("no CUDA: host-device syncs exist only with a device")
    model = random_model(TINY, device=plan.device, dtype=torch.float32, seed=3)
    original = loop_module._train_window
    calls = [0]
    sites: collections.Counter[str] = collections.Counter()

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:  # the first step compiles kernels and builds the optimizer state
            return original(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                for warning in caught:
                    if "synchroniz" in str(warning.message):
                        line = linecache.getline(warning.filename, warning.lineno).strip()
                        sites[f"{Path(warning.filename).name}:{warning.lineno}: {line}"] += 1

    loop_module._train_window = counted
    try:
        train(model, random_rows(10, 512, TINY.vocab_size), accelerator="cuda", ctx_len=512, micro_bsz=2,
              grad_cp=1, precision="bf16")
    finally:
        loop_module._train_window = original
    steps = calls[0] - 1
    record.set("steps_counted", steps)
    record.set("syncs_per_step", sum(sites.values()) / max(steps, 1))
    record.set("sites", dict(sites.most_common()))
    record.line(f"{sum(sites.values()) / max(steps, 1):.1f} host-device syncs per training step (bf16, grad_cp, "
                f"{steps} steps counted with torch.cuda.set_sync_debug_mode('warn')), by call site:")
    for site, count in sites.most_common(12):
        record.line(f"- {count / max(steps, 1):.1f}/step  {site}")


def sft(plan: Plan, record: Record, shape: str) -> None:
    """Full fine-tuning of ``shape`` in bf16 at ``plan.ctx``: tokens/s, MFU, peak memory; a profile of one step."""
    config = plan.shapes[shape]
    micro, grad_cp = plan.sft[shape]
    model = random_model(config, device=plan.device, dtype=torch.bfloat16, wkv_backend=plan.wkv_backend)
    rows = random_rows(micro * plan.train_steps, plan.ctx, config.vocab_size)
    _reset_peak(plan)
    start = time.perf_counter()
    records = train(model, rows, accelerator=plan.accelerator, ctx_len=plan.ctx, micro_bsz=micro,
                    grad_cp=grad_cp, precision="bf16")
    _report_rate(plan, record, config, records, f"{shape} SFT bf16, ctx {plan.ctx}, micro_bsz {micro}, "
                 f"grad_cp {grad_cp}", seconds=time.perf_counter() - start)
    if plan.device.type == "cuda":
        _profile_step(plan, record, model, micro)


def lora(plan: Plan, record: Record) -> None:
    """LoRA on ``plan.lora``'s shape in bf16: tokens/s, peak memory, trainable parameters."""
    shape, micro, grad_cp, rank = plan.lora
    config = plan.shapes[shape]
    model = random_model(config, device=plan.device, dtype=torch.bfloat16, wkv_backend=plan.wkv_backend)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank), verbose=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record.set("trainable_params", trainable)
    _reset_peak(plan)
    start = time.perf_counter()
    records = train(model, random_rows(micro * plan.train_steps, plan.ctx, config.vocab_size),
                    accelerator=plan.accelerator, ctx_len=plan.ctx, micro_bsz=micro, grad_cp=grad_cp,
                    precision="bf16")
    _report_rate(plan, record, config, records, f"{shape} LoRA r={rank} ({trainable / 1e6:.1f}M trainable) bf16, "
                 f"ctx {plan.ctx}, micro_bsz {micro}, grad_cp {grad_cp}", seconds=time.perf_counter() - start)


def infctx(plan: Plan, record: Record) -> None:
    """Infinite-context training: one row of ``ctx`` tokens per step in ``chunk_ctx`` pieces, state carried."""
    shape, ctx, chunk = plan.infctx
    config = plan.shapes[shape]
    model = random_model(config, device=plan.device, dtype=torch.bfloat16, wkv_backend=plan.wkv_backend)
    _reset_peak(plan)
    start = time.perf_counter()
    records = train(model, random_rows(plan.train_steps, ctx, config.vocab_size), accelerator=plan.accelerator,
                    ctx_len=ctx, micro_bsz=1, grad_cp=1, precision="bf16", train_type="infctx", chunk_ctx=chunk)
    _report_rate(plan, record, config, records, f"{shape} infctx bf16, ctx {ctx} in chunks of {chunk}, truncated "
                 "BPTT, grad_cp 1", seconds=time.perf_counter() - start)


def _reset_peak(plan: Plan) -> None:
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _report_rate(plan: Plan, record: Record, config: RWKV7Config, records: list[dict[str, Any]], what: str, *,
                 seconds: float) -> None:
    rates = [r["tokens_per_s"] for r in records[1:]] or [records[0]["tokens_per_s"]]
    tokens_per_s = statistics.median(rates)
    flops_per_token = 6 * matmul_weights_per_token(config)
    mfu = tokens_per_s * flops_per_token / plan.matmul_rate if plan.matmul_rate else None
    peak = peak_memory_gib(plan.device)
    record.set("tokens_per_s", tokens_per_s)
    record.set("step_tokens_per_s", [r["tokens_per_s"] for r in records])
    record.set("losses", [r["loss"] for r in records])
    record.set("flops_per_token", flops_per_token)
    record.set("mfu", mfu)
    record.set("peak_memory_gib", peak)
    record.set("wall_s", seconds)
    record.line(f"{what}: {tokens_per_s:,.0f} tokens/s (median of {len(rates)} steps after the first), MFU "
                + (f"{mfu:.1%}" if mfu is not None else "n/a") + " of the measured bf16 matmul rate, peak memory "
                + (f"{peak:.1f} GiB" if peak is not None else "n/a (CPU)")
                + f"; losses {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}")


def _profile_step(plan: Plan, record: Record, model, micro: int) -> None:
    """One bare forward+backward under bf16 autocast over float32 weights (what the trainer runs), timed and
    profiled: the kernels that take the time say what bounds the MFU."""
    model.float().train()
    ids = torch.randint(1, model.config.vocab_size, (micro, plan.ctx), device=plan.device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    sync(plan.device)
    start = time.perf_counter()
    step()
    sync(plan.device)
    bare = micro * plan.ctx / (time.perf_counter() - start)
    record.set("bare_fwd_bwd_tokens_per_s", bare)
    record.line(f"bare forward+backward (no optimizer, no loop): {bare:,.0f} tokens/s")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(plan.device)
    averages = prof.key_averages()
    # torch 2.4 renamed the profiler's "cuda" times to "device" times.
    newer = hasattr(next(iter(averages)), "self_device_time_total")
    key = "self_device_time_total" if newer else "self_cuda_time_total"
    table = averages.table(sort_by=key, row_limit=15, max_name_column_width=60)
    record.set("profile", table)
    record.line("top kernels of one forward+backward (self device time):\n```\n" + table + "\n```")
