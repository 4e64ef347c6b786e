"""GPU check sections about the machine and the kernels: ``env``, ``cuda_tests``, ``numerics``.

``numerics`` compares the WKV7 backend under test with the reference scan run in float64 on the same
(rounded) inputs: output, final state, and the gradients of every input and of the initial state, as the
largest error relative to the largest value of each tensor. Tolerances:

* float32: 1e-4, the issue's bound. fla's Triton matmuls may run in tf32 (10-bit mantissa, roundoff
  ~5e-4); if fp32 misses 1e-4 by that much, tf32 is the cause to look at first.
* bfloat16: 2e-2. Inputs, intra-chunk products and the output are rounded to bf16 (8-bit mantissa,
  unit roundoff 2^-9 ~ 2e-3); errors of a few roundoffs per product, summed over a 64-token chunk and
  decayed across chunks, stay within ~10 roundoffs of the largest value. The chunked torch backend's error
  on the same bf16 inputs is recorded beside it as a yardstick.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch
from gpu_check_plan import Plan, Record, Skipped, sync, timed
from roofline import matmul_rate

from rwkvtune.ops import wkv7
from rwkvtune.ops.fla import fla_unavailable_reason, wkv7_fla

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
PACKAGES = ("torch", "triton", "flash-linear-attention", "fla-core", "rwkv", "peft", "lightning-fabric",
            "datasets", "transformers", "numpy")


def env(plan: Plan, record: Record) -> None:
    """Machine, versions, and the bf16 matmul rate every MFU figure is measured against."""
    record.set("python", sys.version.split()[0])
    record.set("platform", platform.platform())
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    record.set("versions", versions)
    record.set("torch_cuda", torch.version.cuda)
    record.line("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; CUDA {torch.version.cuda}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.set("gpu", {"name": props.name, "capability": f"{props.major}.{props.minor}",
                           "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count})
        record.set("driver", _nvidia_smi())
        record.line(f"GPU: {props.name} (sm {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                    f"{props.multi_processor_count} SMs), driver {record.data['driver']}")
        probe = torch.zeros(1, device="cuda", dtype=torch.bfloat16)
        record.set("fla_unavailable", fla_unavailable_reason(probe))
        record.line(f"fla: {record.data['fla_unavailable'] or 'available'}")
    size = 8192 if plan.device.type == "cuda" else 512
    rate = matmul_rate(torch.bfloat16, size, repeats=10, device=plan.device)
    record.set("bf16_matmul_flops", rate)
    record.line(f"bf16 {size}^3 matmul: {rate / 1e12:.1f} TFLOP/s (best of 10; the MFU denominator)")


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def cuda_tests(plan: Plan, record: Record) -> None:
    """``pytest -m cuda`` over the whole suite (tests/cuda, test_generation_cuda.py and every other
    ``cuda``-marked test), in a child process; the summary line and the failures' tail are kept."""
    if plan.device.type != "cuda":
        raise Skipped("no CUDA: the cuda-marked tests need a GPU")
    # A test module that fails to import (a package missing there) must not stop the cuda-marked ones.
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "tests"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = out.stdout + out.stderr
    summary = next((line for line in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|error)", line)), "")
    record.set("returncode", out.returncode)
    record.set("summary", summary.strip("= "))
    record.set("tail", text[-4000:])
    record.line(f"pytest -m cuda: {summary.strip('= ') or 'no summary'} (exit {out.returncode})")
    if out.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"cuda tests failed: {summary}\n{text[-2000:]}")


def wkv_inputs(shape: tuple[int, int, int, int], device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """``r, w, k, v, a, b`` ``[B, T, H, N]`` (float32) in RWKV-7's ranges, and a non-zero initial state."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    w = -0.6065306597126334 * torch.sigmoid(torch.randn(shape, generator=gen))
    kk = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)
    b = kk * torch.rand(shape, generator=gen)
    batch, _, heads, size = shape
    state = 0.1 * torch.randn(batch, heads, size, size, generator=gen)
    return [x.to(device) for x in (r, w, k, v, -kk, b, state)]


def run_wkv(fn, inputs: list[torch.Tensor], dtype: torch.dtype, cotangents: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[y, final state, grad r, w, k, v, a, b, grad state]`` of ``fn`` with the inputs cast to ``dtype``
    (the state stays float32, as in the contract; float64 for the reference)."""
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    xs = [x.to(dtype).detach().requires_grad_() for x in inputs[:6]]
    state = inputs[6].to(state_dtype).detach().requires_grad_()
    y, final = fn(*xs, state)
    (torch.sum(y.double() * cotangents[0]) + torch.sum(final.double() * cotangents[1])).backward()
    return [y.detach(), final.detach(), *(x.grad for x in xs), state.grad]


PARTS = ("y", "state", "dr", "dw", "dk", "dv", "da", "db", "dstate")


def relative_errors(got: list[torch.Tensor], expected: list[torch.Tensor]) -> dict[str, float]:
    """max |got - expected| / max |expected| per part."""
    return {name: ((g.double() - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
            for name, g, e in zip(PARTS, got, expected)}


def numerics(plan: Plan, record: Record) -> None:
    """The backend under test against the float64 reference scan, fp32 and bf16; then a timing."""
    if plan.device.type == "cuda":
        reason = fla_unavailable_reason(torch.zeros(1, device="cuda"))
        if reason is not None:
            raise RuntimeError(reason)
        candidates = {"fla": lambda *a: wkv7_fla(*a),
                      "fla_unbounded": lambda *a: wkv7_fla(*a, bounded_decay=False),
                      "chunked": lambda *a: wkv7(*a[:6], state=a[6], backend="chunked")}
    else:  # dry run: the chunked backend stands in for fla
        candidates = {"chunked (stands in for fla)": lambda *a: wkv7(*a[:6], state=a[6], backend="chunked")}
    inputs = wkv_inputs(plan.numerics, plan.device)
    gen = torch.Generator().manual_seed(1)
    batch, length, heads, size = plan.numerics
    cotangents = [torch.randn(plan.numerics, generator=gen, dtype=torch.float64).to(plan.device),
                  torch.randn(batch, heads, size, size, generator=gen, dtype=torch.float64).to(plan.device)]
    record.line(f"WKV7 vs the float64 reference scan, B={batch} T={length} H={heads} N={size}, non-zero initial "
                "state; max |error| / max |reference| per tensor")
    results, failures = {}, []
    for dtype in (torch.float32, torch.bfloat16):
        # The reference sees the same rounded inputs: the error measured is the kernel's, not the rounding's.
        rounded = [x.to(dtype).to(torch.float64) for x in inputs[:6]] + [inputs[6].double()]
        expected = run_wkv(_reference, rounded, torch.float64, cotangents)
        for name, fn in candidates.items():
            errors = relative_errors(run_wkv(fn, inputs, dtype, cotangents), expected)
            dtype_name = str(dtype).removeprefix("torch.")
            results[f"{name}/{dtype_name}"] = errors
            record.set("errors", results)
            worst = max(errors, key=errors.get)
            ok = errors[worst] <= TOLERANCE[dtype]
            if not ok and (name.startswith("fla") or plan.dry_run):  # chunked on CUDA is a yardstick only
                failures.append(f"{name} {dtype_name}: {worst} {errors[worst]:.2e}")
            record.line(f"- {name} {dtype_name}: worst {worst} {errors[worst]:.2e} (tolerance {TOLERANCE[dtype]:.0e}: "
                        f"{'ok' if ok else 'EXCEEDED'}); y {errors['y']:.1e}, state {errors['state']:.1e}, "
                        f"dstate {errors['dstate']:.1e}")
    _speed(plan, record, candidates)
    if failures:
        raise AssertionError("WKV7 beyond tolerance: " + "; ".join(failures))


def _reference(r, w, k, v, a, b, state):
    return wkv7(r, w, k, v, a, b, state=state, backend="reference")


def _speed(plan: Plan, record: Record, candidates) -> None:
    """Forward+backward milliseconds of each candidate in bf16 at a training shape (0.1b's heads)."""
    batch, length, heads, _ = plan.speed
    inputs = wkv_inputs(plan.speed, plan.device, seed=2)
    xs = [x.to(torch.bfloat16).requires_grad_() for x in inputs[:6]]
    state = inputs[6].requires_grad_()
    speeds = {}
    for name, fn in candidates.items():
        def step(fn=fn):
            y, final = fn(*xs, state)
            (y.float().sum() + final.sum()).backward()

        speeds[name] = 1e3 * timed(plan.device, step, repeats=3)
        record.set("fwd_bwd_ms", speeds)
        tokens = batch * length / (speeds[name] / 1e3)
        record.line(f"- {name} bf16 forward+backward, B={batch} T={length} H={heads}: {speeds[name]:.1f} ms "
                    f"({tokens / 1e6:.1f} M tokens/s per layer)")
    sync(plan.device)
