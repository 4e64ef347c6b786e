"""The prepared GPU check (issue 15): CUDA tests, fla numerics, training and decode speed, in one short run.

Each section runs in its own process under its own time limit, so that one that fails, hangs or poisons the
CUDA context is recorded and the next one still runs; the whole run stops starting sections when its
budget is spent. Results go to ``--out`` (default ``$OUT``, else ``runs/gpu_check``) after every section:
``results.json`` (every figure) and ``summary.md`` (readable). ``benchmarks/gpu_check.sh`` installs the
carried wheels on the GPU machine and then runs this.

    python benchmarks/gpu_check.py                       # on a GPU machine (~7 min)
    python benchmarks/gpu_check.py --dry-run             # here: tiny shapes on the CPU, CUDA-only parts skipped
    python benchmarks/gpu_check.py --sections numerics,decode_0.1b
    python benchmarks/gpu_check.py --dry-run --in-process --sections env,numerics   # one process (the test)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from gpu_check_plan import Plan, Record, Skipped


@dataclass(frozen=True)
class Section:
    """One independent part of the check: ``run(plan, record)``, stopped after ``limit_s`` seconds."""

    name: str
    run: Callable[[Plan, Record], None]
    limit_s: int


def sections() -> list[Section]:
    """Every section, in the order they run (the most important first: a late one may meet the budget's end)."""
    # Imported here: the section modules import the trainers, peft and friends, which a child needs only
    # for its own section.
    from gpu_check_decode import decode
    from gpu_check_kernels import cuda_tests, env, numerics
    from gpu_check_training import infctx, lora, loss_match, sft, syncs

    return [
        Section("env", env, 60),
        Section("cuda_tests", cuda_tests, 150),
        Section("numerics", numerics, 90),
        Section("loss_match", loss_match, 60),
        Section("syncs", syncs, 45),
        Section("sft_0.1b", functools.partial(sft, shape="rwkv7-0.1b"), 60),
        Section("sft_1.5b", functools.partial(sft, shape="rwkv7-1.5b"), 100),
        Section("decode_0.1b", functools.partial(decode, shape="rwkv7-0.1b"), 75),
        Section("decode_1.5b", functools.partial(decode, shape="rwkv7-1.5b"), 90),
        Section("lora_1.5b", lora, 80),
        Section("infctx", infctx, 70),
    ]


#: Seconds a section needs at least to be worth starting (process start, imports, CUDA context).
_MIN_START_S = 20


def run_child(section: Section, args: argparse.Namespace, result: Path, matmul_rate: float, limit: float) -> str:
    """Run ``section`` in a child process (its own process group, so a timeout ends its children too);
    returns ``"ok"``, ``"skipped"``, ``"error"`` or ``"timeout"``."""
    command = [sys.executable, __file__, "--child", section.name, "--result", str(result),
               "--matmul-rate", str(matmul_rate)] + (["--dry-run"] if args.dry_run else [])
    process = subprocess.Popen(command, start_new_session=True)
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:  # also when this process is stopped (SIGTERM from gpu_check.sh's timeout): no section outlives it
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return {0: "ok", 3: "skipped"}.get(code, "error")


def run_section(section: Section, plan: Plan, result: Path) -> str:
    """Run ``section`` here, its results in ``result``; the status as in :func:`run_child`."""
    record = Record(result)
    try:
        section.run(plan, record)
    except Skipped as why:
        record.set("skipped", str(why))
        record.line(f"skipped: {why}")
        return "skipped"
    except Exception as error:  # recorded, and the next section runs
        record.set("error", f"{type(error).__name__}: {error}")
        record.set("traceback", traceback.format_exc()[-6000:])
        record.line(f"error: {type(error).__name__}: {str(error)[:2000]}")
        return "error"
    return "ok"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="results folder (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU; CUDA-only sections skipped")
    parser.add_argument("--sections", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--budget-s", type=float, default=450, help="no section starts after this many seconds")
    parser.add_argument("--in-process", action="store_true", help="run the sections in this process (no time limits)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--matmul-rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    by_name = {s.name: s for s in sections()}
    if args.child is not None:  # one section in this (child) process
        status = run_section(by_name[args.child], Plan.make(dry_run=args.dry_run, matmul_rate=args.matmul_rate),
                             Path(args.result))
        sys.exit({"ok": 0, "skipped": 3}.get(status, 1))

    # SIGTERM (the shell's timeout) unwinds like an exception, so the running section's process group is ended.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run to check the script on the CPU")
    wanted = args.sections.split(",") if args.sections else list(by_name)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(by_name)}")
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    results = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}
    deadline = time.monotonic() + args.budget_s
    matmul_rate = 0.0
    for name in wanted:
        section = by_name[name]
        left = deadline - time.monotonic()
        part = out / f".{name}.json"
        part.unlink(missing_ok=True)
        print(f"\n## {name}", flush=True)
        start = time.monotonic()
        if left < _MIN_START_S and not args.in_process:
            status = "skipped"
            Record(part).line(f"skipped: out of the run's budget ({args.budget_s:.0f} s)")
        elif args.in_process:
            status = run_section(section, Plan.make(dry_run=args.dry_run, matmul_rate=matmul_rate), part)
        else:
            status = run_child(section, args, part, matmul_rate, min(section.limit_s, left))
        entry = json.loads(part.read_text()) if part.exists() else {"data": {}, "lines": []}
        part.unlink(missing_ok=True)
        if status == "timeout":
            entry["lines"].append(f"timeout: stopped after {min(left, section.limit_s):.0f} s "
                                  "(figures above were measured before)")
        elif status == "error" and not entry["lines"]:
            entry["lines"].append("error: the section's process died before recording anything (see the log)")
        results["sections"][name] = {"status": status, "seconds": round(time.monotonic() - start, 1), **entry}
        matmul_rate = results["sections"].get("env", {}).get("data", {}).get("bf16_matmul_flops", matmul_rate)
        write_results(out, results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_results(out, results)
    print(f"\nresults: {out / 'results.json'}, {out / 'summary.md'}", flush=True)
    return results


def write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    lines = [f"# GPU check{' (dry run: tiny shapes on the CPU)' if results['dry_run'] else ''}", "",
             f"started {results['started']}" + (f", finished {results['finished']}" if "finished" in results else ""),
             "", "| section | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {entry['status']} | {entry['seconds']} |" for name, entry in results["sections"].items()]
    for name, entry in results["sections"].items():
        lines += ["", f"## {name}: {entry['status']}", "", *entry["lines"]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
