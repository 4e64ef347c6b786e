"""Parameter dtypes for training: float32 masters for what is trained, the compute dtype for frozen matrices.

Mixed precision (Fabric's ``bf16-mixed``) keeps every weight in float32 and lets autocast cast it to bf16
in each matrix product. For a trained weight that float32 copy is the optimizer's master. For a frozen
one (a LoRA or state-tuning base) it only costs memory: the product sees the same bf16 values whether the
weight is held in float32 or in bf16. So frozen weights that enter only autocast matrix products --
linear layers, including the base layers under LoRA adapters, and the low-rank MLP matrices of the time
mix -- are held in the compute dtype, provided their values are exactly representable in it (official
checkpoints are bf16, so they are; a float32 base that is not keeps float32, since rounding it would
change the model for good). Everything else stays float32: frozen vectors and norms feed element-wise ops
that autocast does not cast, and the embedding's output is the residual stream, which must stay float32
as in full training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rwkvtune.model.rwkv7 import TimeMix

#: The time-mix low-rank MLP matrices (used only in matrix products).
_LOW_RANK = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


def matmul_only_weights(model: nn.Module) -> set[int]:
    """``id`` of every parameter of ``model`` that is used only as a matrix-product operand."""
    found: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found.add(id(module.weight))
        elif isinstance(module, TimeMix):
            found.update(id(getattr(module, name)) for name in _LOW_RANK if isinstance(getattr(module, name), nn.Parameter))
    return found


def hold_for_training(model: nn.Module, compute_dtype: torch.dtype, *,
                      restore_trained: bool = True) -> Callable[[], None]:
    """Cast ``model``'s tensors for training and return a function that restores their dtypes.

    Trainable parameters and all buffers become float32; frozen matrix-product weights become
    ``compute_dtype`` when that is exact (float32 without mixed precision); other frozen parameters
    float32. Restoring is lossless for every frozen tensor; trained ones are cast back too unless
    ``restore_trained`` is False (then they keep their float32 values).
    """
    low = matmul_only_weights(model) if compute_dtype != torch.float32 else set()
    original: list[tuple[torch.Tensor, torch.dtype]] = []
    params = {id(p): p for p in model.parameters()}.values()
    tensors = [(p, compute_dtype if not p.requires_grad and id(p) in low and _exact_in(p, compute_dtype)
                else torch.float32) for p in params]
    tensors += [(b, torch.float32) for b in model.buffers()]
    for tensor, dtype in tensors:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            if restore_trained or not tensor.requires_grad:
                original.append((tensor, tensor.dtype))
            tensor.data = tensor.data.to(dtype)

    def restore() -> None:
        for tensor, dtype in original:
            tensor.data = tensor.data.to(dtype)

    return restore


def _exact_in(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every value of ``tensor`` survives a round trip through ``dtype``."""
    if tensor.dtype == dtype:
        return True
    if torch.finfo(tensor.dtype).bits < torch.finfo(dtype).bits:
        return True  # widening is exact
    return torch.equal(tensor.detach().to(dtype).to(tensor.dtype), tensor.detach())
