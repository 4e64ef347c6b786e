"""Training configs: ``SFTConfig`` and ``PretrainConfig`` (the seed README's fields and defaults, plus the
ones users of TRL / RWKV-LM expect). Plain dataclasses, no torch; every field's ``help`` states its unit.

``validate()`` runs on construction and reports every problem in one ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("bf16", "fp16", "fp32")
LR_SCHEDULES = ("cosine", "linear", "constant")
TRAIN_TYPES = ("normal", "infctx")
REPORT_TO = ("tensorboard", "wandb", "swanlab")
#: Strategies the trainers run (``engine.fabric.make_strategy``); the DeepSpeed ones need the extra.
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3",
              "deepspeed_stage_2_offload", "deepspeed_stage_3_offload", "single_device")
#: Fabric strategies users may know that the trainers do not run, and what to use instead.
REFUSED_STRATEGIES = {
    "ddp_spawn": "it starts the processes by pickling the trainer (reward functions, datasets) into fresh "
                 "interpreters and trains copies, leaving the model you passed untrained; use strategy='ddp' "
                 "(Fabric starts one process per device by running your script again) or launch with torchrun",
}


def _help(text: str, default: Any, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class LoopConfig:
    """Fields shared by every trainer: what the training loop, the optimizer and Fabric read."""

    # Batch
    micro_bsz: int = _help("Sequences per device per forward/backward.", 4)
    accumulate_grad_batches: int = _help("Micro-batches per optimizer step (loss normalised by target tokens "
                                         "over the whole window).", 1)

    # Length of training
    epoch_count: int = _help("Passes over the training data.", 10)
    epoch_steps: int | None = _help("Optimizer steps per epoch (None = one full pass over the data).", None)
    max_steps: int | None = _help("Stop after this many optimizer steps in total (None = epoch_count epochs).", None)

    # Optimizer and schedule (RWKV-LM's AdamW groups: att.w0 at 2x lr, decay only on large matrices)
    lr_init: float = _help("Peak learning rate, reached after warmup.", 3e-4)
    lr_final: float = _help("Learning rate at the last step.", 1e-5)
    warmup_steps: int = _help("Optimizer steps of linear warmup from 0 to lr_init.", 50)
    lr_schedule: str = _help("Decay after warmup: cosine, linear or constant (lr_init throughout).", "cosine")
    weight_decay: float = _help("AdamW weight decay on the large projection matrices only.", 0.0)
    beta1: float = _help("AdamW beta1.", 0.9)
    beta2: float = _help("AdamW beta2.", 0.99)
    adam_eps: float = _help("AdamW epsilon (RWKV-LM uses 1e-18).", 1e-18)
    grad_clip: float = _help("Clip the global gradient norm to this (0 = no clipping).", 1.0)

    # Memory and numerics
    grad_cp: int = _help("1 = recompute each block in backward (less memory, ~30% more compute); 0 = off.", 1)
    precision: str = _help("bf16 or fp16 (mixed: fp32 master weights) or fp32.", "bf16")

    # Hardware
    accelerator: str = _help("auto, cpu or cuda.", "auto")
    devices: int = _help("Devices (GPUs, or CPU processes) per node.", 1)
    num_nodes: int = _help("Machines taking part.", 1)
    strategy: str = _help("auto (one process, or DDP for several), ddp, fsdp (PyTorch FSDP2), "
                          "single_device, deepspeed_stage_1/2/3 (and _offload variants of 2 and 3).", "auto")
    ddp_timeout: int = _help("Seconds a process waits in a collective (gradient sync, barrier) for the others before "
                             "it stops with an error naming the last checkpoint.", 1800)

    # Output, checkpoints, logging
    output_dir: str = _help("Where checkpoints, logs and the final model go.", "output")
    epoch_save: int = _help("Save a checkpoint every N epochs (0 = never).", 1)
    save_every_n_batches: int = _help("Save a checkpoint every N optimizer steps (0 = never).", 0)
    save_total_limit: int = _help("Keep at most this many checkpoints, oldest pruned first (0 = keep all).", 2)
    resume_from_checkpoint: str | None = _help("A checkpoint directory, or 'latest' in output_dir.", None)
    overwrite_output_dir: bool = _help("Allow a new run in an output_dir that holds an earlier run's checkpoints "
                                       "(they are then pruned like this run's); otherwise that is an error.", False)
    report_to: str | list[str] | None = _help("tensorboard, wandb, swanlab (comma-separated or a list); "
                                       "metrics.jsonl is always written.", "")
    logging_steps: int = _help("Log metrics every N optimizer steps.", 10)
    seed: int = _help("Seed for the data order, a new adapter's random init (peft_config=...) and dropout.", 42)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def report_to_list(self) -> list[str]:
        """``report_to`` as a list of backend names (``None`` or ``""``: none)."""
        if self.report_to is None:
            return []
        if isinstance(self.report_to, str):
            return [name.strip() for name in self.report_to.split(",") if name.strip()]
        return list(self.report_to)

    def validate(self) -> None:
        """Raise one ``ValueError`` that lists every invalid field and how to fix it."""
        problems = self._problems()
        if problems:
            raise ValueError(f"invalid {type(self).__name__}:\n  - " + "\n  - ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        problems += _integers(self, ("micro_bsz", "accumulate_grad_batches", "epoch_count", "devices", "num_nodes",
                                     "logging_steps", "ddp_timeout"), minimum=1)
        problems += _integers(self, ("warmup_steps", "save_every_n_batches", "save_total_limit", "epoch_save",
                                     "grad_cp"), minimum=0)
        for name in ("epoch_steps", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be None or an integer >= 1, got {value!r}")
        if not self.lr_init > 0 or self.lr_final < 0:
            problems.append(f"lr_init must be > 0 and lr_final >= 0, got {self.lr_init} and {self.lr_final}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.adam_eps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("adam_eps, weight_decay and grad_clip must be >= 0")
        problems += _choice("precision", self.precision, PRECISIONS)
        problems += _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        problems += _choice("accelerator", self.accelerator, ("auto", "cpu", "cuda", "gpu"))
        if self.strategy in REFUSED_STRATEGIES:
            problems.append(f"strategy={self.strategy!r} is not supported: {REFUSED_STRATEGIES[self.strategy]}")
        else:
            problems += _choice("strategy", self.strategy, STRATEGIES)
        if self.strategy == "single_device" and isinstance(self.devices, int) and isinstance(self.num_nodes, int) \
                and self.devices * self.num_nodes > 1:
            problems.append(f"strategy='single_device' runs one process, but devices x num_nodes = "
                            f"{self.devices * self.num_nodes}: use 'ddp' (or 'auto')")
        if self.strategy in STRATEGIES and self.strategy.startswith("deepspeed") and \
                importlib.util.find_spec("deepspeed") is None:
            problems.append(f"strategy={self.strategy!r} needs DeepSpeed: pip install 'rwkvtune[deepspeed]'")
        if self.strategy == "fsdp" and self.precision == "fp16":
            problems.append("strategy='fsdp' runs precision='bf16' or 'fp32', not 'fp16' (Fabric's FSDP2 strategy has "
                            "no fp16 mode with loss scaling); use bf16, or strategy='ddp' for fp16")
        for name in self.report_to_list:
            if name not in REPORT_TO:
                problems.append(f"report_to has unknown backend {name!r}; choose from {', '.join(REPORT_TO)}")
            elif importlib.util.find_spec(name) is None:
                problems.append(f"report_to={name!r} needs the package: pip install 'rwkvtune[{name}]'")
        problems += _booleans(self, ("overwrite_output_dir",))
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopConfig:
        """Build from a dict (e.g. a checkpoint's saved config); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class TrainConfig(LoopConfig):
    """Supervised training on rows of tokens (SFT and pretraining): the loop's fields plus the row length,
    infinite-context training and evaluation."""

    ctx_len: int = _help("Longest sequence in tokens; longer rows are truncated (and counted in the log).", 2048)
    train_type: str = _help("normal (whole rows), or infctx: each row in chunks of chunk_ctx tokens with the RNN "
                            "state carried from chunk to chunk (rows up to ctx_len tokens).", "normal")
    chunk_ctx: int = _help("infctx: tokens per chunk (<= ctx_len; the last chunk of a row may be shorter).", 512)
    truncated_bptt: bool = _help("infctx: True = stop gradients at chunk boundaries (each chunk's backward before "
                                 "the next forward; memory of one chunk); False = exact gradients through the "
                                 "carried state (memory grows with the row).", True)
    eval_steps: int = _help("Evaluate on eval_dataset every N optimizer steps (0 = at epoch ends only).", 0)

    def _problems(self) -> list[str]:
        problems = super()._problems()
        problems += _integers(self, ("ctx_len", "chunk_ctx"), minimum=1)
        problems += _integers(self, ("eval_steps",), minimum=0)
        problems += _choice("train_type", self.train_type, TRAIN_TYPES)
        problems += _booleans(self, ("truncated_bptt",))
        if self.train_type == "infctx":
            if isinstance(self.chunk_ctx, int) and isinstance(self.ctx_len, int) and self.chunk_ctx > self.ctx_len:
                problems.append(f"infctx needs chunk_ctx ({self.chunk_ctx}) <= ctx_len ({self.ctx_len})")
            if self.strategy in STRATEGIES and not self.strategy.startswith(("auto", "ddp", "single_device")):
                problems.append(f"infctx runs on one device or under DDP (strategy 'auto' or 'ddp'), not {self.strategy!r}:"
                                " its several backward passes per micro-batch do not fit a sharded strategy's "
                                "gradient reduction")
        return problems


def _integers(config: Any, names: tuple[str, ...], *, minimum: int) -> list[str]:
    return [f"{name} must be an integer >= {minimum}, got {getattr(config, name)!r}" for name in names
            if not isinstance(getattr(config, name), int) or isinstance(getattr(config, name), bool)
            or getattr(config, name) < minimum]


def _booleans(config: Any, names: tuple[str, ...]) -> list[str]:
    return [f"{name} must be True or False, got {getattr(config, name)!r}" for name in names
            if not isinstance(getattr(config, name), bool)]


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> list[str]:
    return [] if value in choices else [f"{name} must be one of {', '.join(choices)}; got {value!r}"]


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: loss on the labelled tokens only (prompt tokens carry -100)."""

    output_dir: str = _help("Where checkpoints, logs and the final model go.", "output_sft")


@dataclass
class PretrainConfig(TrainConfig):
    """Continued pretraining: loss on every token of the packed text."""

    weight_decay: float = _help("AdamW weight decay on the large projection matrices only.", 0.01)
    output_dir: str = _help("Where checkpoints, logs and the final model go.", "output_pretrain")
