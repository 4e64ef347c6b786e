"""``SFTTrainer`` and ``PretrainTrainer``: supervised training on rows of tokens.

The trainers differ only in their defaults (``SFTConfig`` vs ``PretrainConfig``) and in what a row
supervises, which the data layer decides from the columns. Everything around the data is
``BaseTrainer``'s; the loop is ``rwkvtune.engine.loop.fit``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from rwkvtune.config.train import PretrainConfig, SFTConfig, TrainConfig
from rwkvtune.data import BinidxWindows, collate, prepare_examples
from rwkvtune.engine.checkpoint import TrainProgress
from rwkvtune.engine.loop import Workload, rows_workload
from rwkvtune.engine.steps import MicroStep, NoBackprop, chunked_step, full_sequence_step
from rwkvtune.model import base_model_of
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.training.base import BaseTrainer

logger = logging.getLogger(__name__)


class _RowTrainer(BaseTrainer):
    """Rows of ``input_ids`` (+ ``labels``), chat ``messages``, ``prompt`` + ``completion`` or ``text``."""

    config_class: type[TrainConfig] = TrainConfig
    args_type = TrainConfig

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        args: TrainConfig | None = None,
        train_dataset: Any = None,
        processing_class: WorldTokenizer | None = None,
        eval_dataset: Any = None,
        peft_config: Any = None,
    ):
        super().__init__(model, args, processing_class, peft_config)
        if train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset")
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset

    def _prepare_data(self) -> None:
        config = self.args
        self._train_rows = self._rows(self.train_dataset)
        self._eval_rows = self._rows(self.eval_dataset) if self.eval_dataset is not None else None
        if config.train_type == "infctx" and config.truncated_bptt and hasattr(self.model, "time_state"):
            logger.warning("state tuning with truncated_bptt=True: only the first chunk_ctx (%d) tokens of each row "
                           "reach the tuned start state; set truncated_bptt=False to train it on whole rows",
                           config.chunk_ctx)

    def _workload(self, fabric, model, progress: TrainProgress) -> Workload:
        return rows_workload(self._train_rows, self.args, collate=collate, micro_step=micro_step_for(self.args))

    def _evaluation(self, fabric, model):
        if self._eval_rows is None:
            return None, 0
        rows, config, step = self._eval_rows, self.args, micro_step_for(self.args)
        return (lambda: _eval_loss(fabric, model, rows, config, step)), config.eval_steps

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


class SFTTrainer(_RowTrainer):
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


class PretrainTrainer(_RowTrainer):
    """Continued pretraining (``PretrainConfig``): ``text`` rows are packed into ``ctx_len`` windows; a
    ``rwkvtune.data.BinidxWindows`` corpus (RWKV-LM ``.bin/.idx``) is read memory-mapped."""

    config_class = PretrainConfig
