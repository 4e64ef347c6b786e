"""Linear layers for single-token decoding on the CPU, in whichever weight layout decodes fastest.

How fast ``x @ W^T`` runs for a few rows against an ``nn.Linear`` weight (row-major ``[out, in]``)
depends on the CPU's BLAS paths, and no layout wins everywhere:

* On an Intel Xeon (AMX), a contiguous ``[in, out]`` copy (``x @ W_t``) beat ``F.linear`` on every
  fp32 shape: the 65536x256 head 2.7 -> 2.0 ms with the weight out of cache, 256x256 5.5 -> 3.7 us in
  cache. A bf16 product of one row ran 2-3x slower than the same product on an fp32 copy (256x256:
  24 us vs 9 us), while from 8 rows on bf16 won on the larger shapes, and from 64 rows on all (AMX).
* On an AMD EPYC, MKL ran the fp32 one-row product as a single-threaded GEMV at ~12 GB/s; as ``W x^T``
  with the weight split into row groups (a view, no copy) it became a batched GEMM on all threads: the
  65536x768 head 15.7 -> 6.8 ms. On the Xeon that grouped form is 2-4x *slower*.

Timing one product at a time misleads: in a decode step the head streams tens of MB and pushes the
block weights out of cache, which single timings (with the weight in cache) do not see. So the decoder
times whole steps, one :class:`Form` for every plain layer, and :class:`FormChooser` keeps the fastest
per model shape and row bucket. :class:`DecodeLinears` applies one form and keeps the weight copies it
needs for as long as it lives (one ``generate`` call at most), so weights trained between calls are read
afresh. While it lives, a copied layer's weights take their memory once more (transposed) or, for a
16-bit model, twice more (float32), up to ``_MAX_COPY_BYTES`` in all.

The head also writes into a reused buffer: glibc maps every allocation above 32 MiB fresh from the
kernel, so a new ``[B, 65536]`` fp32 logits tensor (B > 128) is page-faulted while it is written, on
every step (the L4-C256 head at B = 256: 155 ms vs 125 ms into a reused buffer).

Only plain ``nn.Linear`` layers without bias or hooks on the CPU take these paths; anything else (a
LoRA-wrapped layer, a layer with forward hooks) is called as a module.

The one entry point is :func:`decode_layouts`: a decoder hands it its layers and gets a
:class:`CpuLayouts` (``None`` off the CPU, where none of this applies), whose ``linears_for`` gives the
layers in the chosen form for a batch. Decisions are kept by a :class:`FormChooser`, passed in by whoever
makes decoders; without one, the process-wide chooser of this module. Seeded generation passes
:data:`PINNED_CHOOSER`, which times nothing and always takes the plain form: timing depends on the
machine's load, and a different form rounds differently, so same-seed runs could sample different tokens.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Form(enum.Enum):
    """A way to compute ``x @ W^T`` for a plain linear layer."""

    PLAIN = "plain"  # F.linear on the weight itself
    TRANSPOSED = "transposed"  # x @ W_t, W_t a contiguous [in, out] copy in the weight's dtype
    FLOAT_TRANSPOSED = "float_transposed"  # the same on a float32 copy of a 16-bit weight
    GROUPED = "grouped"  # W x^T in row groups (a view of the weight) for float32 weights, else plain


#: Most rows for which any form but the plain one is tried (above it the products are GEMMs).
_MAX_TUNED_ROWS = 32
#: Most rows for which a float32 copy of a 16-bit weight is tried (at 8 rows it still won on small
#: shapes and lost on large ones; from 64 rows the 16-bit products won everywhere).
_FLOAT_MAX_ROWS = 16
#: Most bytes of weight copies a decoder may hold; larger models keep the plain (and grouped) forms.
_MAX_COPY_BYTES = 2 << 30
#: A timed decode step slower than this is timed once per form, not ``trials`` times.
_SLOW_STEP_SECONDS = 0.05
#: Row groups, and the most rows for which the grouped form is used, for block layers and for the head.
_LAYER_GROUPS, _LAYER_MAX_ROWS = 8, 4
_HEAD_GROUPS, _HEAD_MAX_ROWS = 64, 32


def candidate_forms(dtype: torch.dtype, device: torch.device, rows: int, weight_bytes: int) -> list[Form]:
    """The forms worth timing for ``rows`` rows of a model in ``dtype`` on ``device`` whose plain linear
    weights take ``weight_bytes``, plain first. Forms whose copies would exceed ``_MAX_COPY_BYTES`` are left
    out: a large model decodes from its own weights."""
    if device.type != "cpu" or rows > _MAX_TUNED_ROWS:
        return [Form.PLAIN]
    forms = [Form.PLAIN]
    if weight_bytes <= _MAX_COPY_BYTES:
        forms.append(Form.TRANSPOSED)
    if dtype == torch.float32:
        forms.append(Form.GROUPED)
    elif (dtype in (torch.bfloat16, torch.float16) and rows <= _FLOAT_MAX_ROWS
          and 2 * weight_bytes <= _MAX_COPY_BYTES):
        forms.append(Form.FLOAT_TRANSPOSED)
    return forms


class FormChooser:
    """Times the candidate forms of a decode step and keeps the fastest, once per key.

    ``key`` names the case (model shape, dtype, row bucket, threads); the decision is kept for the process,
    so repeated generations take the same path and give the same numbers. Another process, or the same
    one under another load, may time another form faster: the logits then differ by float rounding, which
    can change sampled tokens. Seeded generation therefore takes :class:`PinnedChooser` instead.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, trials: int = 3):
        self._clock = clock
        self._trials = trials
        self._chosen: dict[Hashable, Form] = {}

    def get(self, key: Hashable) -> Form | None:
        return self._chosen.get(key)

    def choose(self, key: Hashable, forms: Sequence[Form], run: Callable[[Form], object]) -> Form:
        """The form for which ``run(form)`` is fastest, timed one form after the other (so that only one
        form's weight copies need to exist at a time): an untimed run first, which makes the copies and
        leaves that form's weights in cache as a decode step finds them after a step of the same form,
        then up to ``trials`` timed runs, best of them; one, when a step takes over ``_SLOW_STEP_SECONDS``."""
        best = {}
        for form in forms:
            run(form)
            best[form] = float("inf")
            for _ in range(self._trials):
                start = self._clock()
                run(form)
                seconds = self._clock() - start
                best[form] = min(best[form], seconds)
                if seconds > _SLOW_STEP_SECONDS:
                    break
        chosen = self._chosen[key] = min(forms, key=best.__getitem__)
        return chosen


class PinnedChooser(FormChooser):
    """A chooser that times nothing: every case takes the plain form (``F.linear`` on the weights as they are).

    For seeded generation, whose tokens must not depend on how busy the machine was when a form was
    timed: the plain form depends on nothing measured, needs no weight copies, and is the form the decoder
    takes anyway above ``_MAX_TUNED_ROWS`` rows, so the arithmetic does not change as rows finish.
    """

    def get(self, key: Hashable) -> Form:
        return Form.PLAIN

    def choose(self, key: Hashable, forms: Sequence[Form], run: Callable[[Form], object]) -> Form:
        return Form.PLAIN


#: Decisions of the decoders that are given no chooser: one per process, so that repeated generations take
#: the same path (and give the same numbers) without timing again.
_PROCESS_CHOOSER = FormChooser()
#: The chooser of seeded generation (``GenerationEngine.sessions``): the same form in every process.
PINNED_CHOOSER = PinnedChooser()


def decode_layouts(head: nn.Module, layers: Sequence[nn.Module], model_key: Hashable,
                   chooser: FormChooser | None = None) -> CpuLayouts | None:
    """The CPU layout choice for a decoder that calls ``head`` and ``layers`` (every linear layer of its
    step), or ``None`` when the head's weight is not on the CPU (call every layer as its module there).

    ``model_key`` names the model's shape (layers, widths, vocabulary); a decision is kept per shape,
    dtype, row bucket and thread count in ``chooser`` (default: this module's process-wide one).
    """
    if head.weight.device.type != "cpu":
        return None
    return CpuLayouts(head, layers, model_key, _PROCESS_CHOOSER if chooser is None else chooser)


class CpuLayouts:
    """Which :class:`Form` one decoder's plain linear layers take, per number of rows, and those layers in
    it: timed on whole decode steps the first time a row bucket is seen (per chooser), one form's weight
    copies at a time."""

    def __init__(self, head: nn.Module, layers: Sequence[nn.Module], model_key: Hashable, chooser: FormChooser):
        # What the fastest form depends on: the shapes, dtype and device of the weights, and which of the
        # layers are plain (a LoRA-wrapped layer is called as a module in every form).
        called = [head, *layers]
        plain = [is_plain_linear(layer) for layer in called]
        weight = head.weight
        self.plain_weight_bytes = sum(layer.weight.nbytes for layer, ok in zip(called, plain) if ok)
        self._dtype, self._device = weight.dtype, weight.device
        self._key = (model_key, weight.dtype, weight.device.type, tuple(plain))
        self._chooser = chooser
        self.linears: DecodeLinears | None = None  # the current form's layers (and weight copies)

    def linears_for(self, rows: int, trial: Callable[[DecodeLinears], object]) -> DecodeLinears:
        """The layers in the fastest form for ``rows`` rows; ``trial(linears)`` runs one whole decode step
        in ``linears`` (on a scratch state) and is called only while a new row bucket is timed."""
        forms = candidate_forms(self._dtype, self._device, rows, self.plain_weight_bytes)
        key = (self._key, 1 << (rows - 1).bit_length(), torch.get_num_threads())
        form = forms[0] if len(forms) == 1 else self._chooser.get(key)
        if form is None:
            form = self._chooser.choose(key, forms, lambda f: trial(self._in_form(f)))
        return self._in_form(form)

    def _in_form(self, form: Form) -> DecodeLinears:
        """The layers in ``form``; another form's weight copies are dropped first (one set at a time)."""
        if self.linears is None or self.linears.form is not form:
            self.linears = None
            self.linears = DecodeLinears(form)
        return self.linears


class DecodeLinears:
    """The plain linear layers of one decoder, multiplied in one form.

    Keeps the weight copies the form needs (made at first use) and the head's output buffer for as long
    as this object lives; make a new one when the weights may have changed.
    """

    def __init__(self, form: Form):
        self.form = form
        self._copies: dict[Hashable, torch.Tensor] = {}  # id(weight), or the ids of stacked layers -> copy
        self._plain: dict[Hashable, bool] = {}  # id(layer), or ids of stacked layers -> takes the fast path
        self._head_buffer = torch.empty(0)  # [B_max, V]

    def linear(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` for ``x`` ``[B, in]`` -> ``[B, out]``."""
        if not self._is_plain(layer, x):
            return layer(x)
        return self._product(layer.weight, x, _LAYER_GROUPS, _LAYER_MAX_ROWS)

    def stacked(self, layers: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``layers[i](x[i])`` for ``x`` ``[n, B, in]`` -> ``n`` tensors ``[B, out]``: one batched product on
        a stacked copy of the weights in the transposed forms, when all layers are plain and alike."""
        key = tuple(map(id, layers))
        stackable = self._plain.get(key)
        if stackable is None:
            stackable = self._plain[key] = (self.form in (Form.TRANSPOSED, Form.FLOAT_TRANSPOSED)
                                            and all(self._is_plain(layer, x) for layer in layers)
                                            and len({layer.weight.shape for layer in layers}) == 1)
        if stackable:
            copy = self._copies.get(key)
            if copy is None:
                copy = self._copies[key] = torch.stack([self._transposed(layer.weight) for layer in layers])
            if self.form is Form.FLOAT_TRANSPOSED:
                return torch.bmm(x.float(), copy).to(x.dtype).unbind(0)
            return torch.bmm(x, copy).unbind(0)
        return tuple(self.linear(layer, rows) for layer, rows in zip(layers, x))

    def head(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The LM head ``layer(x)``: ``[B, C]`` -> ``[B, V]``; in the plain and transposed forms a view of a
        buffer that the next call overwrites."""
        if not self._is_plain(layer, x):
            return layer(x)
        if self.form is not Form.PLAIN and self.form is not Form.TRANSPOSED:
            return self._product(layer.weight, x, _HEAD_GROUPS, _HEAD_MAX_ROWS)
        batch, vocab = x.shape[0], layer.weight.shape[0]
        buffer = self._head_buffer
        if buffer.shape[0] < batch or buffer.shape[1:] != (vocab,) or buffer.dtype != x.dtype:
            buffer = self._head_buffer = torch.empty(batch, vocab, dtype=x.dtype)
        weight = self._copy(layer.weight) if self.form is Form.TRANSPOSED else layer.weight.t()
        return torch.mm(x, weight, out=buffer[:batch])

    def _is_plain(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``layer`` takes the fast path (decided once per layer: a decoder's inputs keep one device
        and dtype, and its layers do not change while it lives)."""
        plain = self._plain.get(id(layer))
        if plain is None:
            plain = self._plain[id(layer)] = (is_plain_linear(layer) and x.device.type == "cpu"
                                              and layer.weight.device.type == "cpu"
                                              and layer.weight.dtype == x.dtype)
        return plain

    def _product(self, weight: torch.Tensor, x: torch.Tensor, groups: int, max_grouped_rows: int) -> torch.Tensor:
        form = self.form
        if form is Form.TRANSPOSED:
            return torch.mm(x, self._copy(weight))
        if form is Form.FLOAT_TRANSPOSED:
            return torch.mm(x.float(), self._copy(weight)).to(x.dtype)
        if (form is Form.GROUPED and weight.dtype == torch.float32 and x.shape[0] <= max_grouped_rows
                and weight.shape[0] % groups == 0 and weight.is_contiguous()):
            return _grouped_matmul(weight, x, groups)
        return F.linear(x, weight)

    def _copy(self, weight: torch.Tensor) -> torch.Tensor:
        copy = self._copies.get(id(weight))
        if copy is None:
            copy = self._copies[id(weight)] = self._transposed(weight)
        return copy

    def _transposed(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` ``[out, in]`` as a contiguous ``[in, out]`` copy, in float32 for ``FLOAT_TRANSPOSED``."""
        return (weight.float() if self.form is Form.FLOAT_TRANSPOSED else weight).t().contiguous()


def is_plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` itself (not a subclass or a wrapper), without bias and without forward hooks: one
    whose ``module(x)`` is ``x @ weight^T`` and nothing else."""
    return (type(module) is nn.Linear and module.bias is None and not module._forward_hooks
            and not module._forward_pre_hooks)


def _grouped_matmul(weight: torch.Tensor, x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x @ weight^T`` as ``weight x^T`` in ``groups`` row groups: ``[B, in]`` -> ``[B, out]`` (contiguous)."""
    out_features, in_features = weight.shape
    batch = x.shape[0]
    grouped = weight.view(groups, out_features // groups, in_features)  # [G, out/G, in], no copy
    # x^T as a transposed view of contiguous [B, in] rows: MKL took 7x longer with a contiguous [in, B].
    columns = x.contiguous().t().unsqueeze(0).expand(groups, in_features, batch)  # [G, in, B]
    return torch.bmm(grouped, columns).view(out_features, batch).t().contiguous()
