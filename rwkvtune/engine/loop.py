"""The one training loop shared by every trainer: accumulate, normalise by target tokens, step, log, save.

The loss of an accumulation window is the sum of the token losses of all its micro-batches on all
processes divided by the number of target tokens in that window, so ``micro_bsz x accumulation`` and
``processes x micro_bsz`` splits of the same rows give the same update (up to float rounding).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from rwkvtune.config.train import LoopConfig
from rwkvtune.engine.checkpoint import TrainProgress, save_checkpoint
from rwkvtune.engine.data_order import epoch_micro_batches
from rwkvtune.engine.fabric import accumulating, uses_deepspeed
from rwkvtune.engine.metrics import MetricsWriter
from rwkvtune.engine.schedule import lr_at_step
from rwkvtune.engine.steps import MicroStep, full_sequence_step

logger = logging.getLogger(__name__)

Collate = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


def plan_windows(n_rows: int, config: LoopConfig, *, epoch: int, rank: int, world_size: int) -> list[list[list[int]]]:
    """This process's accumulation windows for ``epoch``: lists of micro-batches of row indices."""
    batches = epoch_micro_batches(n_rows, epoch=epoch, seed=config.seed, micro_bsz=config.micro_bsz,
                                  rank=rank, world_size=world_size)
    acc = config.accumulate_grad_batches
    windows = [batches[i:i + acc] for i in range(0, len(batches), acc)]
    return windows[:config.epoch_steps] if config.epoch_steps else windows


def total_steps(n_rows: int, config: LoopConfig, world_size: int) -> int:
    """Optimizer steps of a run over ``n_rows`` rows (SFT and pretraining)."""
    return _steps(len(plan_windows(n_rows, config, epoch=0, rank=0, world_size=world_size)), config)


def _steps(per_epoch: int, config: LoopConfig) -> int:
    steps = per_epoch * config.epoch_count
    return min(steps, config.max_steps) if config.max_steps else steps


def token_normalisation(fabric, window: list[dict[str, Any]]) -> tuple[float, float]:
    """The window's loss is its summed token losses over its target tokens on all processes.

    Returns ``(backward scale, divisor of the summed logged loss)``. DDP averages gradients over processes,
    so the backward scale multiplies their number back in.
    """
    local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in window)
    n_targets = max(int(fabric.all_reduce(torch.tensor(float(local)), reduce_op="sum").item()), 1)
    return fabric.world_size / n_targets, n_targets


def count_tokens(batch: dict[str, Any]) -> int:
    """Tokens a micro-batch fed the model (its attention mask, else every id)."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()


@dataclass
class Workload:
    """What the loop trains on and how.

    Attributes:
        plan: ``(epoch, rank, world_size) -> windows``: this process's accumulation windows for an epoch,
            each a list of micro-batch items (one optimizer step per window).
        prepare: item -> batch (a dict; its tensors are moved to the device).
        micro_step: forward and backward of one batch (``engine.steps``).
        normalise: ``(fabric, window batches) -> (backward scale, logged-loss divisor)``.
        tokens: tokens a batch fed the model (for tokens/s), read after its step ran.
        metrics: extra metrics averaged since the last log, merged into each log record.
        before_update: called with the optimizer step's number (from 1) after a window's micro-steps and
            before its optimizer step; it may raise to stop training before the update. It runs on every
            process: one that raises must decide from values all processes agree on (all-reduced).
    """

    plan: Callable[[int, int, int], list[list[Any]]]
    prepare: Callable[[Any], dict[str, Any]]
    micro_step: MicroStep = full_sequence_step
    normalise: Callable[[Any, list[dict[str, Any]]], tuple[float, float]] = token_normalisation
    tokens: Callable[[dict[str, Any]], int] = count_tokens
    metrics: Callable[[], dict[str, float]] | None = None
    before_update: Callable[[int], None] | None = None


def rows_workload(rows: Sequence[dict[str, Any]], config: LoopConfig, *, collate: Collate,
                  micro_step: MicroStep = full_sequence_step) -> Workload:
    """Supervised rows (SFT, pretraining): shuffled micro-batches of ``config.micro_bsz`` rows, collated."""
    def plan(epoch: int, rank: int, world_size: int) -> list[list[list[int]]]:
        return plan_windows(len(rows), config, epoch=epoch, rank=rank, world_size=world_size)

    return Workload(plan=plan, prepare=lambda micro: collate([rows[i] for i in micro]), micro_step=micro_step)


def fit(
    fabric,
    model,
    optimizer: torch.optim.Optimizer,
    workload: Workload,
    config: LoopConfig,
    *,
    output_dir: Path,
    progress: TrainProgress,
    metrics: MetricsWriter | None,
    evaluate: Callable[[], float] | None = None,
    eval_steps: int = 0,
    trainable_only: bool = False,
    export: Callable[[Path], None] | None = None,
) -> dict[str, float]:
    """Train from ``progress`` to the end; returns the last logged metrics.

    ``workload`` says what each window holds and how each micro-batch runs (``rows_workload`` for SFT
    and pretraining; a GRPO rollout workload). ``evaluate`` runs every ``eval_steps`` optimizer steps, or
    at each epoch end when that is 0.

    ``progress`` is advanced in place; its ``total_steps`` is set to the run's optimizer steps before the
    first window (what a workload reads for it).

    ``trainable_only`` and ``export`` shape every checkpoint (see ``save_checkpoint``): an adapter run
    saves its trained tensors and its adapter files, not the frozen base.

    Raises ``FloatingPointError`` naming the step when a window's loss is not finite (before the
    optimizer step, so the weights stay finite).
    """
    rank, world = fabric.global_rank, fabric.world_size
    steps = _steps(len(workload.plan(0, 0, world)), config)
    if steps == 0:
        raise ValueError(f"no optimizer step fits: too few rows for micro_bsz={config.micro_bsz} on {world} "
                         "process(es)")
    progress.total_steps = steps
    bar = tqdm(total=steps, initial=progress.step, disable=not fabric.is_global_zero, dynamic_ncols=True,
               desc="train")
    last: dict[str, float] = {}
    tokens_since, time_since, loss_since, windows_since = 0, time.perf_counter(), 0.0, 0
    model.train()
    while progress.epoch < config.epoch_count and progress.step < steps:
        windows = workload.plan(progress.epoch, rank, world)
        while progress.window < len(windows) and progress.step < steps:
            window = [workload.prepare(item) for item in windows[progress.window]]
            loss = _train_window(fabric, model, optimizer, window, config, progress.step, steps, workload)
            progress.step += 1
            progress.window += 1
            tokens_since += sum(workload.tokens(batch) for batch in window)
            loss_since += loss
            windows_since += 1
            bar.update(1)
            eval_loss = None
            if evaluate is not None and eval_steps and progress.step % eval_steps == 0:
                started = time.perf_counter()
                eval_loss = evaluate()
                time_since += time.perf_counter() - started  # tokens/s counts training time only
            if progress.step % config.logging_steps == 0 or progress.step == steps:
                elapsed = time.perf_counter() - time_since
                last = {"loss": loss_since / windows_since, "lr": optimizer.param_groups[0]["lr"]
                        / optimizer.param_groups[0].get("lr_scale", 1.0), "epoch": progress.epoch,
                        "tokens_per_s": tokens_since * world / max(elapsed, 1e-9)}
                if workload.metrics is not None:
                    last.update(workload.metrics())
                if eval_loss is not None:
                    last["eval_loss"] = eval_loss
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}",
                                tok_s=f"{last['tokens_per_s']:.0f}")
                if metrics is not None and fabric.is_global_zero:
                    metrics.log(progress.step, last)
                tokens_since, time_since, loss_since, windows_since = 0, time.perf_counter(), 0.0, 0
            elif eval_loss is not None:  # an evaluation step that is not a logging step gets its own record
                last["eval_loss"] = eval_loss
                if metrics is not None and fabric.is_global_zero:
                    metrics.log(progress.step, {"eval_loss": eval_loss, "epoch": progress.epoch})
            if config.save_every_n_batches and progress.step % config.save_every_n_batches == 0:
                _save(fabric, output_dir, f"batch{progress.step}", model, optimizer, progress, config,
                      trainable_only=trainable_only, export=export)
        if progress.window >= len(windows):
            progress.epoch += 1
            progress.window = 0
            if evaluate is not None and not eval_steps:
                last["eval_loss"] = evaluate()
                if metrics is not None and fabric.is_global_zero:
                    metrics.log(progress.step, {"eval_loss": last["eval_loss"], "epoch": progress.epoch})
            if config.epoch_save and progress.epoch % config.epoch_save == 0:
                _save(fabric, output_dir, f"epoch{progress.epoch}", model, optimizer, progress, config,
                      trainable_only=trainable_only, export=export)
    bar.close()
    return last


@dataclass
class _WindowBackprop:
    """``Backprop`` for one micro-batch of a window: scaled backward, gradient sync at the window's end."""

    fabric: Any
    model: Any
    scale: float
    last_micro_batch: bool

    def scope(self, final: bool):
        return accumulating(self.fabric, self.model, last=self.last_micro_batch and final)

    def __call__(self, loss_sum: torch.Tensor) -> None:
        self.fabric.backward(loss_sum * self.scale)


def _train_window(fabric, model, optimizer, window: list[dict[str, Any]], config: LoopConfig, step: int,
                  steps: int, workload: Workload) -> float:
    """Accumulate one window and take one optimizer step; returns the window's loss."""
    scale, divisor = workload.normalise(fabric, window)
    lr = lr_at_step(step, total_steps=steps, lr_init=config.lr_init, lr_final=config.lr_final,
                    warmup_steps=config.warmup_steps, schedule=config.lr_schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    loss_sum = torch.zeros((), dtype=torch.float32, device=fabric.device)
    for i, batch in enumerate(window):
        batch.update({key: value.to(fabric.device) for key, value in batch.items() if isinstance(value, torch.Tensor)})
        backprop = _WindowBackprop(fabric, model, scale, last_micro_batch=i == len(window) - 1)
        loss_sum += workload.micro_step(model, batch, backprop)
    if workload.before_update is not None:
        workload.before_update(step + 1)
    loss = fabric.all_reduce(loss_sum, reduce_op="sum").item() / divisor
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at optimizer step {step + 1}: training stopped before the "
                                 "update. Lower lr_init, use precision='bf16' instead of 'fp16', or check the data")
    if config.grad_clip and not uses_deepspeed(fabric):  # DeepSpeed clips inside optimizer.step()
        fabric.clip_gradients(model, optimizer, max_norm=config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _save(fabric, output_dir: Path, name: str, model, optimizer, progress: TrainProgress,
          config: LoopConfig, *, trainable_only: bool, export: Callable[[Path], None] | None) -> None:
    path = save_checkpoint(fabric, output_dir, name, model=model, optimizer=optimizer,
                           progress=TrainProgress(**asdict(progress)), config=config.to_dict(),
                           keep=config.save_total_limit, trainable_only=trainable_only, export=export)
    logger.info("saved checkpoint %s", path)
