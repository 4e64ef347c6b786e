"""``SFTTrainer`` and ``PretrainTrainer``: wire config -> data -> model -> loop -> checkpoint in one place.

The trainers differ only in their defaults (``SFTConfig`` vs ``PretrainConfig``) and in what a row
supervises, which the data layer decides from the columns; the loop is ``rwkvtune.engine.loop.fit``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rwkvtune.config.train import PretrainConfig, SFTConfig, TrainConfig
from rwkvtune.data import BinidxWindows, collate, prepare_examples
from rwkvtune.engine.checkpoint import CHECKPOINT_NAME, TrainProgress, load_checkpoint, resolve_resume
from rwkvtune.engine.fabric import full_state_dict, make_fabric, uses_deepspeed
from rwkvtune.engine.host_memory import keep_freed_host_memory
from rwkvtune.engine.loop import fit, rows_workload
from rwkvtune.engine.master_weights import hold_for_training
from rwkvtune.engine.metrics import MetricsWriter
from rwkvtune.engine.steps import MicroStep, NoBackprop, chunked_step, full_sequence_step
from rwkvtune.engine.optim import build_optimizer
from rwkvtune.hub import AutoModel, AutoTokenizer, PretrainedRWKV7, save_pretrained
from rwkvtune.hub.files import staged_directory
from rwkvtune.model import RWKV7, base_model_of
from rwkvtune.tokenizer import WorldTokenizer

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
#: The dtype matrix products run in under each ``precision`` (frozen matrices are held in it).
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Strategies an adapter run supports: its checkpoints keep only the trained tensors, which sharded
#: strategies (FSDP, DeepSpeed) do not allow, and its optimizer state is too small to be worth sharding.
ADAPTER_STRATEGIES = ("auto", "ddp", "ddp_spawn", "single_device")


class _Trainer:
    """Shared constructor and ``train()``; subclasses pick the config class."""

    config_class: type[TrainConfig] = TrainConfig

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        args: TrainConfig | None = None,
        train_dataset: Any = None,
        processing_class: WorldTokenizer | None = None,
        eval_dataset: Any = None,
        peft_config: Any = None,
    ):
        self.args = args if args is not None else self.config_class()
        if train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset")
        if isinstance(model, (str, os.PathLike)):
            # Full fine-tuning trains float32 masters of every weight; an adapter run keeps the file's dtype
            # (train() holds the frozen base in the compute dtype, see engine.master_weights).
            self.model = AutoModel.from_pretrained(model, dtype="fp32" if peft_config is None else None)
            self.tokenizer = processing_class or AutoTokenizer.from_pretrained(model)
        elif isinstance(model, nn.Module) and isinstance(base_model_of(model), RWKV7):
            self.model = model
            self.tokenizer = processing_class or WorldTokenizer.default()
        else:
            raise TypeError(f"model must be a hub directory path, an RWKV7 model, or one wrapped by "
                            f"rwkvtune.peft.get_peft_model; got {type(model).__name__}")
        if peft_config is not None:
            if base_model_of(self.model) is not self.model:
                raise ValueError("the model already carries an adapter; pass either a wrapped model or peft_config, "
                                 "not both")
            from rwkvtune.peft import get_peft_model  # HF peft is imported only for adapter runs

            torch.manual_seed(self.args.seed)  # the adapter's random init (and PiSSA's randomised SVD) repeat
            self.model = get_peft_model(self.model, peft_config)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset

    @property
    def trains_adapter(self) -> bool:
        """Whether the run trains an adapter (LoRA, a tuned state) on a frozen base rather than the model."""
        return base_model_of(self.model) is not self.model

    def train(self) -> dict[str, float]:
        """Train, save ``<output_dir>/final`` and return the last logged metrics.

        ``final`` is a hub directory, or for an adapter run the adapter alone (LoRA: peft's files with the
        train parts and the base fingerprint; state tuning: the state file), like every checkpoint of such
        a run. The model given is trained in place. Under a DeepSpeed strategy the engine keeps it (a
        16-bit copy, or ZeRO-3 shards) and it is not usable afterwards: load ``final`` with
        ``AutoModel.from_pretrained``.
        """
        config = self.args
        output_dir = Path(config.output_dir)
        if self.trains_adapter and config.strategy not in ADAPTER_STRATEGIES:
            raise ValueError(f"LoRA and state tuning do not run under strategy={config.strategy!r} yet; use 'auto' "
                             "or 'ddp' (an adapter's optimizer state is small, so sharding saves little)")
        resume = resolve_resume(output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None
        if resume is None:
            _check_fresh_output_dir(output_dir, config.overwrite_output_dir)
        fabric = make_fabric(config)
        fabric.seed_everything(config.seed)
        if fabric.device.type == "cpu":
            keep_freed_host_memory()  # steps reuse their large tensors instead of page-faulting them in anew
        rows = self._rows(self.train_dataset)
        eval_rows = self._rows(self.eval_dataset) if self.eval_dataset is not None else None

        if config.train_type == "infctx" and config.truncated_bptt and hasattr(self.model, "time_state"):
            logger.warning("state tuning with truncated_bptt=True: only the first chunk_ctx (%d) tokens of each row "
                           "reach the tuned start state; set truncated_bptt=False to train it on whole rows",
                           config.chunk_ctx)
        base = base_model_of(self.model)
        original_dtype = base.dtype
        base.grad_cp = bool(config.grad_cp)
        # An adapter run leaves its trained tensors (LoRA weights, train parts, a state) in float32: what
        # final/ holds, so that merging in memory gives what merging the saved adapter gives.
        restore_dtypes = hold_for_training(self.model, COMPUTE_DTYPES[config.precision],
                                           restore_trained=not self.trains_adapter)
        try:
            last = self._fit(fabric, config, rows, eval_rows, resume, output_dir)
        except BaseException:
            if not uses_deepspeed(fabric):
                restore_dtypes()  # leave the caller's model usable, as it was given
            raise
        if self.trains_adapter:
            if fabric.is_global_zero:
                with staged_directory(output_dir / FINAL_DIR, overwrite=True) as staging:
                    self.model.save_pretrained(staging)
                logger.info("saved the final adapter to %s", output_dir / FINAL_DIR)
        else:
            weights = full_state_dict(fabric, self.model)  # every process: DeepSpeed gathers; rank 0 keeps it
            if weights is not None:
                self._save_final(output_dir / FINAL_DIR, {name: tensor.to(original_dtype) if tensor.is_floating_point()
                                                          else tensor for name, tensor in weights.items()})
        fabric.barrier()
        if not uses_deepspeed(fabric):  # DeepSpeed's engine owns the module's storage
            restore_dtypes()
        return last

    def _fit(self, fabric, config: TrainConfig, rows, eval_rows, resume: Path | None,
             output_dir: Path) -> dict[str, float]:
        """The optimizer, Fabric's set-up, resume and the loop; returns the last metrics with ``step``."""
        optimizer = build_optimizer(self.model, config)
        model, optimizer = fabric.setup(self.model, optimizer)
        progress = TrainProgress()
        if resume is not None:
            check = getattr(self.model, "check_resume", None)  # an adapter compares its settings and base
            if check is not None:
                check(resume)
            progress = load_checkpoint(fabric, resume, model=model, optimizer=optimizer)
            logger.info("resumed from %s at step %d", resume, progress.step)
        if fabric.is_global_zero:
            output_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsWriter(output_dir, config.report_to_list, config.to_dict()) if fabric.is_global_zero else None

        micro_step = micro_step_for(config)

        def evaluate() -> float:
            return _eval_loss(fabric, model, eval_rows, config, micro_step)

        export = self.model.save_pretrained if self.trains_adapter else None
        try:
            last = fit(fabric, model, optimizer, rows_workload(rows, config, collate=collate, micro_step=micro_step),
                       config, output_dir=output_dir, progress=progress, metrics=metrics,
                       evaluate=evaluate if eval_rows is not None else None, eval_steps=config.eval_steps,
                       trainable_only=self.trains_adapter,
                       export=export)
        finally:
            if metrics is not None:
                metrics.close()
        return {**last, "step": progress.step}

    def _rows(self, dataset: Any):
        """Training examples of ``dataset``; a binidx corpus is read window by window, never loaded whole."""
        if isinstance(dataset, BinidxWindows):
            if dataset.ctx_len is not None and dataset.ctx_len != self.args.ctx_len:
                raise ValueError(f"BinidxWindows has ctx_len {dataset.ctx_len} but the config has {self.args.ctx_len}; "
                                 "drop the BinidxWindows ctx_len (the trainer then uses the config's)")
            vocab_size = base_model_of(self.model).config.vocab_size
            return dataset.with_ctx_len(self.args.ctx_len, vocab_size=min(vocab_size, dataset.vocab_size or vocab_size))
        return prepare_examples(dataset, tokenizer=self.tokenizer, ctx_len=self.args.ctx_len,
                                vocab_size=base_model_of(self.model).config.vocab_size)

    def _save_final(self, path: Path, weights: dict[str, torch.Tensor]) -> None:
        if isinstance(self.model, PretrainedRWKV7):
            self.model.save_pretrained(path, tokenizer=self.tokenizer, state_dict=weights)
        else:
            # config.json's ctx_len describes the model, not this run's training window: a model without
            # hub metadata gets the default.
            save_pretrained(self.model, path, tokenizer=self.tokenizer, state_dict=weights)
        logger.info("saved the final model to %s", path)


def micro_step_for(config: TrainConfig) -> MicroStep:
    """Whole rows (``train_type="normal"``) or rows in ``chunk_ctx`` pieces with the state carried (``"infctx"``)."""
    if config.train_type == "infctx":
        return chunked_step(config.chunk_ctx, config.truncated_bptt)
    return full_sequence_step


@torch.no_grad()
def _eval_loss(fabric, model, rows, config: TrainConfig, micro_step: MicroStep) -> float:
    """Mean next-token loss over ``rows`` (every process evaluates all rows; cheap next to training)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), config.micro_bsz):
        batch = collate([rows[i] for i in range(start, min(start + config.micro_bsz, len(rows)))])
        total += micro_step(model, {k: v.to(fabric.device) for k, v in batch.items()}, NoBackprop()).item()
        count += int((batch["labels"][:, 1:] != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def _check_fresh_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to start over an earlier run's checkpoints unless asked (they would be pruned or mixed)."""
    if not output_dir.is_dir() or overwrite:
        return
    earlier = sorted(p.name for p in output_dir.iterdir() if CHECKPOINT_NAME.match(p.name) or p.name == FINAL_DIR)
    if earlier:
        raise FileExistsError(f"{output_dir} holds an earlier run ({', '.join(earlier[:5])}); pass "
                              "resume_from_checkpoint='latest' to continue it, choose another output_dir, or set "
                              "overwrite_output_dir=True")


class SFTTrainer(_Trainer):
    """Supervised fine-tuning (``SFTConfig``): loss on labelled tokens only.

    Args:
        model: a hub directory path, a loaded ``RWKV7`` (trained in place), or one wrapped by
            ``rwkvtune.peft.get_peft_model`` (only the adapter is trained).
        args: ``SFTConfig`` (defaults if ``None``).
        train_dataset: HF ``Dataset`` / ``IterableDataset`` / list of dicts with ``input_ids`` (+
            ``labels``), ``messages``, ``prompt`` + ``completion``, or ``text``.
        processing_class: the tokenizer (default: the hub directory's, else the World tokenizer).
        eval_dataset: optional, same formats; its loss is logged as ``eval_loss``.
        peft_config: ``rwkvtune.peft.LoraConfig`` or ``StateTuningConfig``: the trainer wraps the model.
    """

    config_class = SFTConfig


class PretrainTrainer(_Trainer):
    """Continued pretraining (``PretrainConfig``): ``text`` rows are packed into ``ctx_len`` windows; a
    ``rwkvtune.data.BinidxWindows`` corpus (RWKV-LM ``.bin/.idx``) is read memory-mapped."""

    config_class = PretrainConfig
