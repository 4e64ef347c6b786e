"""What every trainer shares: loading the model (a hub path, a model, an adapter-wrapped model, or
``peft_config``), Fabric, parameter dtypes, the optimizer, resume, the loop, checkpoints and ``final/``.

A trainer subclass says what it trains on (:meth:`BaseTrainer._workload`) and may add an evaluation and
files of its own to each checkpoint.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rwkvtune.config.train import LoopConfig
from rwkvtune.engine.checkpoint import CHECKPOINT_NAME, TrainProgress, load_checkpoint, resolve_resume
from rwkvtune.engine.cpu_precision import warn_if_bf16_is_slow
from rwkvtune.engine.distributed import check_shared_directory, decided_once, lost_process_errors
from rwkvtune.engine.fabric import full_state_dict, make_fabric, shards_module, uses_fsdp
from rwkvtune.engine.host_memory import keep_freed_host_memory
from rwkvtune.engine.loop import Workload, fit
from rwkvtune.engine.master_weights import hold_for_training
from rwkvtune.engine.metrics import MetricsWriter
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
ADAPTER_STRATEGIES = ("auto", "ddp", "single_device")


class BaseTrainer:
    """Shared constructor and ``train()``; subclasses set ``config_class`` and implement ``_workload``."""

    config_class: type[LoopConfig] = LoopConfig
    #: The configs this trainer family reads (``config_class`` is the default one).
    args_type: type[LoopConfig] = LoopConfig

    def __init__(self, model: str | os.PathLike | nn.Module, args: LoopConfig | None = None,
                 processing_class: WorldTokenizer | None = None, peft_config: Any = None):
        self.args = args if args is not None else self.config_class()
        if not isinstance(self.args, self.args_type):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(self.args).__name__}")
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
        if self.trains_adapter and self.args.strategy not in ADAPTER_STRATEGIES:
            raise ValueError(f"LoRA and state tuning do not run under strategy={self.args.strategy!r} yet; use "
                             "strategy='ddp' for several devices ('auto' on one): an adapter's optimizer state is "
                             "small, so sharding saves little, and its checkpoints keep only the trained tensors, "
                             "which sharded checkpoints cannot")

    @property
    def trains_adapter(self) -> bool:
        """Whether the run trains an adapter (LoRA, a tuned state) on a frozen base rather than the model."""
        return base_model_of(self.model) is not self.model

    def _starting_policy(self) -> nn.Module | None:
        """The policy as training starts, kept as a reference (GRPO's KL, DPO): a frozen copy (full fine-tuning),
        the starting state on the shared base (state tuning), or ``None`` for LoRA, whose base with the adapter
        switched off is the starting policy without a second copy of the weights."""
        base = base_model_of(self.model)
        if not self.trains_adapter:
            return frozen_for_reference(copy.deepcopy(base), self.args.precision)
        if hasattr(self.model, "time_state"):
            from rwkvtune.peft import StateTunedModel

            return StateTunedModel(base, self.model.time_state.detach().clone()).requires_grad_(False)
        return None

    # ---- what a subclass provides ---------------------------------------------------------------------

    def _prepare_data(self) -> None:
        """Read and check the datasets (called once per ``train()``, before the model is touched)."""

    def _workload(self, fabric, model, progress: TrainProgress) -> Workload:
        """What the loop trains on; ``model`` is Fabric's wrapper."""
        raise NotImplementedError

    def _evaluation(self, fabric, model) -> tuple[Callable[[], float] | None, int]:
        """``(evaluate, eval_steps)``, or ``(None, 0)`` without an evaluation set."""
        return None, 0

    def _checkpoint_files(self, directory: Path) -> None:
        """Write this trainer's own files into a checkpoint being saved (global rank 0)."""

    def _resume_files(self, checkpoint: Path) -> None:
        """Read back what ``_checkpoint_files`` wrote, when resuming from ``checkpoint``."""

    # ---- training ---------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Train, save ``<output_dir>/final`` and return the last logged metrics.

        ``final`` is a hub directory, or for an adapter run the adapter alone (LoRA: peft's files with the
        train parts and the base fingerprint; state tuning: the state file), like every checkpoint of such
        a run. The model given is trained in place. Under a DeepSpeed strategy the engine keeps it (a
        16-bit copy, or ZeRO-3 shards), and under ``strategy="fsdp"`` it is sharded in place (each process
        holds DTensor shards of its parameters): either way it is not usable afterwards: load ``final``
        (the whole model, gathered) with ``AutoModel.from_pretrained``.
        """
        config = self.args
        output_dir = Path(config.output_dir)
        fabric = make_fabric(config)
        # Every process resumes from what global rank 0 sees, and fails with it when the directory is refused.
        resume = decided_once(fabric, lambda: _start_point(output_dir, config))
        check_shared_directory(fabric, output_dir, config.num_nodes)
        fabric.seed_everything(config.seed)
        if fabric.device.type == "cpu":
            if not uses_fsdp(fabric):
                # Steps reuse their large tensors instead of page-faulting them in anew. Not under FSDP: its
                # gather and reduce buffers of every size fragment a heap that is never trimmed, which cost
                # it its memory saving (rwkv7-0.1b, 2 processes: peak RSS 4.6 GiB kept vs 3.9 default, DDP 4.5).
                keep_freed_host_memory()
            if config.precision == "bf16" and fabric.is_global_zero:
                warn_if_bf16_is_slow()
        self._prepare_data()

        base = base_model_of(self.model)
        original_dtype = base.dtype
        base.grad_cp = bool(config.grad_cp)
        # An adapter run leaves its trained tensors (LoRA weights, train parts, a state) in float32: what
        # final/ holds, so that merging in memory gives what merging the saved adapter gives.
        restore_dtypes = hold_for_training(self.model, COMPUTE_DTYPES[config.precision],
                                           restore_trained=not self.trains_adapter)
        try:
            last = self._fit(fabric, config, resume, output_dir)
        except BaseException:
            if not shards_module(fabric):
                restore_dtypes()  # leave the caller's model usable, as it was given
            raise
        if self.trains_adapter:
            if fabric.is_global_zero:
                with staged_directory(output_dir / FINAL_DIR, overwrite=True) as staging:
                    self.model.save_pretrained(staging)
                logger.info("saved the final adapter to %s", output_dir / FINAL_DIR)
        else:
            weights = full_state_dict(fabric, self.model)  # every process: DeepSpeed/FSDP gather; rank 0 keeps it
            if weights is not None:
                self._save_final(output_dir / FINAL_DIR, {name: tensor.to(original_dtype) if tensor.is_floating_point()
                                                          else tensor for name, tensor in weights.items()})
        fabric.barrier()
        if not shards_module(fabric):  # DeepSpeed's engine owns the module's storage; FSDP replaced it by shards
            restore_dtypes()
        return last

    def _fit(self, fabric, config: LoopConfig, resume: Path | None, output_dir: Path) -> dict[str, float]:
        """The optimizer, Fabric's set-up, resume and the loop; returns the last metrics with ``step``."""
        if uses_fsdp(fabric):
            # fully_shard swaps every parameter for a DTensor shard: an optimizer made before would step
            # tensors the module no longer holds. Names are unchanged, so RWKV-LM's groups still apply.
            model = fabric.setup_module(self.model)
            optimizer = fabric.setup_optimizers(build_optimizer(self.model, config))
        else:
            optimizer = build_optimizer(self.model, config)
            model, optimizer = fabric.setup(self.model, optimizer)
        progress = TrainProgress()
        if resume is not None:
            check = getattr(self.model, "check_resume", None)  # an adapter compares its settings and base
            if check is not None:
                check(resume)
            progress = load_checkpoint(fabric, resume, model=model, optimizer=optimizer)
            self._resume_files(resume)
            logger.info("resumed from %s at step %d", resume, progress.step)
        metrics = MetricsWriter(output_dir, config.report_to_list, config.to_dict()) if fabric.is_global_zero else None
        evaluate, eval_steps = self._evaluation(fabric, model)
        try:
            with lost_process_errors(fabric, output_dir, progress, config.ddp_timeout):
                last = fit(fabric, model, optimizer, self._workload(fabric, model, progress), config,
                           output_dir=output_dir, progress=progress, metrics=metrics, evaluate=evaluate,
                           eval_steps=eval_steps, trainable_only=self.trains_adapter, export=self._export)
        finally:
            if metrics is not None:
                metrics.close()
        return {**last, "step": progress.step}

    def _export(self, directory: Path) -> None:
        """A checkpoint's own files: the adapter of an adapter run, and the subclass's."""
        if self.trains_adapter:
            self.model.save_pretrained(directory)
        self._checkpoint_files(directory)

    def _save_final(self, path: Path, weights: dict[str, torch.Tensor]) -> None:
        if isinstance(self.model, PretrainedRWKV7):
            self.model.save_pretrained(path, tokenizer=self.tokenizer, state_dict=weights)
        else:
            # config.json's ctx_len describes the model, not this run's training window: a model without
            # hub metadata gets the default.
            save_pretrained(self.model, path, tokenizer=self.tokenizer, state_dict=weights)
        logger.info("saved the final model to %s", path)


def frozen_for_reference(model: nn.Module, precision: str) -> nn.Module:
    """``model`` in eval mode without gradients, its tensors held as the policy's frozen ones are under
    ``precision``, so that a reference equal to the starting policy scores exactly as the policy does at step 0."""
    model = model.eval().requires_grad_(False)
    hold_for_training(model, COMPUTE_DTYPES[precision])
    return model


def _start_point(output_dir: Path, config: LoopConfig) -> Path | None:
    """The checkpoint to resume from (``None``: a new run, in a directory that holds no earlier one);
    creates ``output_dir``."""
    resume = resolve_resume(output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    if resume is None:
        _check_fresh_output_dir(output_dir, config.overwrite_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return resume


def _check_fresh_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to start over an earlier run's checkpoints unless asked (they would be pruned or mixed)."""
    if not output_dir.is_dir() or overwrite:
        return
    earlier = sorted(p.name for p in output_dir.iterdir() if CHECKPOINT_NAME.match(p.name) or p.name == FINAL_DIR)
    if earlier:
        raise FileExistsError(f"{output_dir} holds an earlier run ({', '.join(earlier[:5])}); pass "
                              "resume_from_checkpoint='latest' to continue it, choose another output_dir, or set "
                              "overwrite_output_dir=True")
