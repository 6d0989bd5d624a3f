"""Inference-time optimisation: :func:`optimize_for_inference` turns a trained :class:`DenseNet` into an
:class:`OptimizedDenseNet` that computes the same eval-mode function faster.

What changes (the weights' function does not; the algebra is in :mod:`densenet.deploy.folding`):

- every batch norm is frozen into a per-channel affine ``a·x + b`` (``a = γ/√(σ²+ε)``, ``b = β − μ·a``);
- a batch norm that directly follows a convolution is folded into it: ``BN(W∗x) = (a·W)∗x + b`` — the stem's
  ``norm0`` into ``conv0`` and each bottleneck's ``norm2`` into ``conv1``;
- a BN-ReLU that a 1×1 convolution follows (each bottleneck's ``norm1``, each transition's ``norm``) becomes one
  per-channel clamp, its scale and shift folded into that convolution: ``σ(a·x + b) = a'·clamp(x, lo, hi) + c``,
  one pass over the layer's input instead of two (one-sided, ``clamp(x, lo, None)``, where every scale of that BN
  has one sign);
- each dense block writes its layers' maps into one preallocated buffer instead of re-concatenating;
- transitions average-pool before their 1×1 conv (both linear: they commute), a quarter of the MACs;
- activations and convolution weights are channels-last; on CPU each convolution is one oneDNN call with the bias
  and the ReLU fused (``mkldnn._convolution_pointwise``) and its weight reordered once into oneDNN's own layout
  for the input shape (not on every call); elsewhere (CUDA, float64) a plain conv and an in-place ReLU;
- in every spatial dimension (``config.spatial_dims``): volumes run 3-D oneDNN convolutions, signals run as
  images of height 1 (oneDNN's fused convolution takes 2-D and 3-D only; ``(N, C, L)`` channels-last is
  ``(N, C, 1, L)`` channels-last, the same memory);
- the large intermediate tensors (each block's buffer, the clamp scratch) are kept between calls, per thread
  and input shape, instead of being allocated afresh: fresh pages cost a page fault each on first touch, and the
  more so when other work has churned the heap in between (benchmarks/NOTES.md, v2 and the page-fault notes).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from densenet import capability
from densenet.deploy import onednn_loop
from densenet.deploy.folding import batch_norm_affine, fold_batch_norm, fold_relu_affine
from densenet.deploy.layer_loop import block_buffer, clamp_inputs, compiled, features_view, fused_layers, hooked
from densenet.deploy.revision import Revision, Tracked, TrackedList
from densenet.model import DenseNet, check_input
from densenet.nn import dims as nd
from densenet.nn.batchnorm import affine_relu
from densenet.nn.layers import DenseBlock, Transition

_FUSED_CONV = (hasattr(torch.ops.mkldnn, "_convolution_pointwise")
               and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight") and torch.backends.mkldnn.is_available())
_FUSED_DTYPES = (torch.float32, torch.bfloat16)  # what oneDNN's fused convolution takes


def fused_conv(x: Tensor) -> bool:
    """Whether convolutions on ``x`` run as oneDNN's fused CPU convolution on packed weights (bfloat16: where this
    CPU has oneDNN's bfloat16, :func:`densenet.capability.onednn_bfloat16`)."""
    return (_FUSED_CONV and x.device.type == "cpu" and x.dtype in _FUSED_DTYPES
            and (x.dtype != torch.bfloat16 or capability.onednn_bfloat16()))


def clamp_bound(bound: Tensor) -> Tensor | None:
    """A folded clamp bound, or ``None`` where it is infinite in every channel (every BN scale of one sign):
    ``clamp(x, lo, None)`` reads one operand less than ``clamp(x, lo, +∞)``, and the clamp is a memory-bound pass
    over each layer's whole input, so the saving is paid back on every layer (benchmarks/NOTES.md, v6)."""
    return None if bool(torch.isinf(bound).all()) else bound


class FrozenConv(Tracked):
    """``σ(W ∗ x + b)`` (σ optional) with fixed weights.

    On CPU in float32/bfloat16: one oneDNN call with the bias and the ReLU fused, the weight reordered into oneDNN's
    blocked layout once per input shape rather than on every call (a reorder is a fixed cost per call, and a
    DenseNet makes over a hundred convolution calls per forward; benchmarks/NOTES.md, v4). The packed copy is
    rebuilt when the input shape or dtype changes, when ``weight`` is replaced (``.to()``, ``load_state_dict`` into
    a new tensor) or changed in place through autograd-visible operations (``copy_``, ``mul_``: its version
    counter); a change made through ``.data`` or a NumPy view, or to a weight made under ``torch.inference_mode()``
    (no version counter), is not seen — call :meth:`clear_cache` after one. Threads running different input shapes
    repack in turn (correct, slower). Otherwise (CUDA, float64, float16) ``F.conv{d}d`` and an in-place ReLU.

    A 1-D kernel ``(C_out, C_in, K)`` is kept as ``(C_out, C_in, 1, K)`` and its signals run as images of height 1.
    Replacements, cleared caches and hooks are counted in :attr:`revision` (shared by a block's convolutions: the
    oneDNN plans made from them are stale after either of the first two).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, stride: int = 1, padding: int = 0, relu: bool = False,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.planar = weight.dim() == 3  # a signal's kernel: run as a unit-height image
        weight = weight.detach().unsqueeze(2) if self.planar else weight.detach()
        dims = weight.dim() - 2
        layout = nd.memory_format(dims) if channels_last else torch.contiguous_format
        self.register_buffer("weight", weight.clone(memory_format=layout))  # (C_out, C_in, *K)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())  # (C_out,)
        self.stride = [1] * self.planar + [stride] * (dims - self.planar)
        self.padding = [0] * self.planar + [padding] * (dims - self.planar)
        self.relu = relu
        # (the weight it was packed from, (input shape, input dtype, weight version), the packed weight)
        self._packed: tuple[Tensor, tuple[Any, ...], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, *spatial)`` → ``(N, C_out, *spatial')``."""
        if self.planar:
            return self._conv(x.unsqueeze(2)).squeeze(2)
        return self._conv(x)

    def _conv(self, x: Tensor) -> Tensor:
        if fused_conv(x):
            return torch.ops.mkldnn._convolution_pointwise(x, self.packed_weight(x.shape, x.dtype), self.bias,
                                                           self.padding, self.stride, [1] * len(self.stride), 1,
                                                           "relu" if self.relu else "none", [], "")
        out = nd.conv(x, self.weight, self.bias, self.stride, self.padding)
        return out.relu_() if self.relu else out

    def packed_weight(self, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """oneDNN's blocked copy of ``weight`` for inputs of ``shape`` and ``dtype`` (CPU), repacked when either or
        the weight changes (see the class docstring)."""
        weight = self.weight
        # a weight made under torch.inference_mode() has no version counter: only replacing it is seen
        key = (tuple(shape), dtype, None if weight.is_inference() else weight._version)
        packed = self._packed
        if packed is None or packed[0] is not weight or packed[1] != key:
            packed = self._packed = (weight, key, torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, self.stride, [1] * len(self.stride), 1, list(shape)))
        return packed[2]

    def clear_cache(self) -> None:
        """Drop the packed weight; the next CPU call packs ``weight`` afresh (and the oneDNN plans made from it are
        made afresh: :attr:`revision`)."""
        self._packed = None
        self.revision.weights += 1

    def tensors(self) -> list[Tensor]:
        """The weight and the bias (where there is one): what a plan made from this convolution reads."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the packed weight out: it is a cache, rebuilt on the next call."""
        return {**self.__dict__, "_packed": None}

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, relu={self.relu}")


class Workspace:
    """Named scratch tensors kept between calls, one set per thread; a set is rebuilt when a request's size,
    dtype or device changes. Safe because an inference module's intermediates never leave its forward."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, numel: int, like: Tensor) -> Tensor:
        """A flat tensor of ``numel`` elements with ``like``'s dtype and device (contents undefined)."""
        tensors = self._local.__dict__.setdefault("tensors", {})
        tensor = tensors.get(name)
        if (tensor is None or tensor.numel() != numel or tensor.dtype != like.dtype or tensor.device != like.device
                # made under torch.inference_mode(): cannot be written outside it
                or (tensor.is_inference() and not torch.is_inference_mode_enabled())):
            tensor = tensors[name] = like.new_empty(numel)
        return tensor

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles start with empty workspaces (the scratch is contents-free by definition)."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()


class FrozenDenseBlock(nn.Module):
    """A dense block for inference, all layers writing into one channels-last buffer [F2]. With a bottleneck, a
    layer is a per-channel clamp of its input and two convolutions — BN1's scale and shift and BN2 folded into
    the 1×1 conv, whose ReLU is fused; without, ``σ(a·x + b)`` and the 3×3 conv (which pads ``σ(a·x + b)`` with
    zeros, so BN1 cannot fold into it)."""

    def __init__(self, block: DenseBlock, channels_last: bool) -> None:
        super().__init__()
        self.growth_rate = block.growth_rate
        self.bottleneck = next(iter(block.values())).bottleneck
        self.num_layers = len(block)
        self.workspace = Workspace()
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN layer loop's, per input shape and dtype
        self.revision = Revision()  # its convolutions' replacements and hooks, counted
        self.conv1 = TrackedList(self.revision)
        self.conv2 = TrackedList(self.revision)
        for index, layer in enumerate(block.values()):
            scale, shift = batch_norm_affine(layer.norm1)
            if self.bottleneck:
                # σ(BN2(W1 ∗ σ(a·x + b))) = σ(W1' ∗ clamp(x, lo, hi) + b1')
                weight1, bias1 = fold_batch_norm(layer.conv1.weight, layer.norm2)
                lo, hi, weight1, bias1 = fold_relu_affine(weight1, bias1, scale, shift)
                self.register_buffer(f"lo{index}", clamp_bound(lo))
                self.register_buffer(f"hi{index}", clamp_bound(hi))
                self.conv1.append(FrozenConv(weight1, bias1, relu=True, channels_last=channels_last))
                self.conv2.append(FrozenConv(layer.conv2.weight, None, padding=1, channels_last=channels_last))
            else:
                self.register_buffer(f"scale{index}", scale)
                self.register_buffer(f"shift{index}", shift)
                self.conv1.append(FrozenConv(layer.conv1.weight, None, padding=1, channels_last=channels_last))

    def _onednn_plan(self, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
        """The oneDNN layer loop's plan for inputs of ``shape`` and ``dtype``, made again when a weight or bias was
        replaced or changed in place (what :meth:`FrozenConv.packed_weight` sees, the same way)."""
        layers = range(self.num_layers)

        def make() -> Any:
            channels = [shape[1] + index * self.growth_rate for index in layers]
            return onednn_loop.plan(
                shape, self.growth_rate, dtype,
                [onednn_loop.float_bound(getattr(self, f"lo{i}"), channels[i], -math.inf) for i in layers],
                [onednn_loop.float_bound(getattr(self, f"hi{i}"), channels[i], math.inf) for i in layers],
                [conv.weight for conv in self.conv1], [conv.bias for conv in self.conv1],
                [conv.weight for conv in self.conv2])

        return self.onednn_plans.get((shape, dtype), make, self.revision, lambda: [
            tensor for conv in itertools.chain(self.conv1, self.conv2) for tensor in conv.tensors()])

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_0, *spatial)`` → ``(N, C_0 + L·k, *spatial)`` (channels-last strides)."""
        n, c0, *spatial = x.shape
        k = self.growth_rate
        total, m = c0 + self.num_layers * k, x.numel() // c0  # M = N·∏ spatial
        buffer = self.workspace.get("buffer", m * total, x)  # [x_0, …, x_L], channels-last
        scratch = self.workspace.get("scratch", m * (total - k), x)
        if (self.bottleneck and fused_conv(x) and not self.conv1[0].planar
                and not hooked(itertools.chain(self.conv1, self.conv2), self.revision)):
            if onednn_loop.applies(x):  # oneDNN primitives made once per input shape (densenet.deploy.onednn_loop)
                features = block_buffer(x, buffer, total)
                onednn_loop.run(self._onednn_plan(tuple(x.shape), x.dtype), buffer, scratch, self.workspace)
                return features
            # the layer loop in C++ (densenet.deploy.layer_loop): ~120 operator calls a forward without Python's share
            width, dims, layers = self.conv2[0].weight.shape[1], len(spatial), range(self.num_layers)
            return compiled(fused_layers)(
                x, buffer, scratch, k, [getattr(self, f"lo{i}") for i in layers],
                [getattr(self, f"hi{i}") for i in layers],
                [conv.packed_weight((n, c0 + index * k, *spatial), x.dtype) for index, conv in enumerate(self.conv1)],
                [conv.bias for conv in self.conv1],
                [conv.packed_weight((n, width, *spatial), x.dtype) for conv in self.conv2], [1] * dims, [0] * dims)
        features = block_buffer(x, buffer, total)  # (N, C_0 + L·k, *spatial) view
        for index in range(self.num_layers):
            channels = c0 + index * k
            if self.bottleneck:
                clamped = clamp_inputs(features, scratch, list(x.shape), channels, getattr(self, f"lo{index}"),
                                       getattr(self, f"hi{index}"))
                new = self.conv2[index](self.conv1[index](clamped))  # (N, k, *spatial)
            else:
                # r = σ(BN1([x_0, …, x_{l−1}])), into the scratch (channels-last)
                relu = affine_relu(features[:, :channels], getattr(self, f"scale{index}"),
                                   getattr(self, f"shift{index}"), out=features_view(scratch, list(x.shape), channels))
                new = self.conv1[index](relu)  # (N, k, *spatial)
            features[:, channels:channels + k].copy_(new)
        return features


class FrozenTransition(nn.Module):
    """``conv1×1(pool(σ(a·x + b)))``, the eval-mode transition with the pool first [F3], computed as
    ``W' ∗ pool(clamp(x, lo, hi)) + b'`` (:func:`~densenet.deploy.folding.fold_relu_affine`; the pool is linear and
    keeps constants)."""

    def __init__(self, transition: Transition, channels_last: bool) -> None:
        super().__init__()
        scale, shift = batch_norm_affine(transition.norm)
        lo, hi, weight, bias = fold_relu_affine(transition.conv.weight, None, scale, shift)
        self.register_buffer("lo", clamp_bound(lo))
        self.register_buffer("hi", clamp_bound(hi))
        self.conv = FrozenConv(weight, bias, channels_last=channels_last)
        self.workspace = Workspace()
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN transition's, per input shape and dtype

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial)`` → ``(N, ⌊θ·C⌋, *⌊spatial/2⌋)``."""
        n, c, *spatial = x.shape
        if (fused_conv(x) and not self.conv.planar and all(side % 2 == 0 for side in spatial)
                and nd.is_channels_last(x) and onednn_loop.applies(x) and not hooked([self.conv], self.conv.revision)):
            # clamp, pool and conv into kept tensors (densenet.deploy.onednn_loop)
            conv, shape = self.conv, tuple(x.shape)
            plan = self.onednn_plans.get((shape, x.dtype), lambda: onednn_loop.transition_plan(
                shape, x.dtype, self.lo, self.hi, conv.weight, conv.bias), conv.revision, conv.tensors)
            return onednn_loop.run_transition(plan, x, self.workspace)
        out = self.workspace.get("clamped", x.numel(), x).view(n, *spatial, c).movedim(-1, 1)
        return self.conv(nd.avg_pool(torch.clamp(x, self.lo, self.hi, out=out), 2, 2))  # pool: (N, C, *spatial/2)


class OptimizedDenseNet(nn.Module):
    """The eval-mode function of a :class:`DenseNet`, for inference only (no training, no autograd).

    Carries the source model's ``config`` and ``meta``. Built by :func:`optimize_for_inference`. ``io_dtype``
    (set by ``optimize_for_inference(..., dtype=)``): the dtype of the inputs it also takes and of the logits it
    returns, when it computes in another (float32 in and out, bfloat16 inside); ``None``: the model's own dtype.
    """

    def __init__(self, model: DenseNet, channels_last: bool = True) -> None:
        super().__init__()
        self.io_dtype: torch.dtype | None = None
        self.config = model.config
        self.meta = model.meta
        self.channels_last = channels_last
        features = model.features
        self.imagenet_stem = model.config.stem == "imagenet"
        if self.imagenet_stem:
            # σ(BN0(W0 ∗ x)) = σ(W0' ∗ x + b0')
            weight0, bias0 = fold_batch_norm(features.conv0.weight, features.norm0)
            self.conv0 = FrozenConv(weight0, bias0, stride=2, padding=3, relu=True, channels_last=channels_last)
        else:
            self.conv0 = FrozenConv(features.conv0.weight, None, padding=1, channels_last=channels_last)
        self.stages = nn.ModuleList(
            FrozenDenseBlock(module, channels_last) if isinstance(module, DenseBlock)
            else FrozenTransition(module, channels_last)
            for module in features.children() if isinstance(module, (DenseBlock, Transition))
        )
        scale5, shift5 = batch_norm_affine(features.norm5)
        self.register_buffer("scale5", scale5)
        self.register_buffer("shift5", shift5)
        self.classifier = copy.deepcopy(model.classifier).requires_grad_(False)
        self.workspace = Workspace()  # the stem's outputs and the head's work tensors (oneDNN stem and head)
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN stem's and head's, per input shape and dtype

    @torch.no_grad()
    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → ``(N, C, *spatial')``, after the final BN-ReLU."""
        return affine_relu(self._trunk(x), self.scale5, self.shift5)

    def _trunk(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → the last dense block's output ``(N, C, *spatial')`` (before the final
        BN-ReLU)."""
        if self.channels_last:
            x = nd.channels_last(x)
        if (self.imagenet_stem and self.channels_last and fused_conv(x) and not self.conv0.planar
                and onednn_loop.applies(x) and not hooked([self.conv0], self.conv0.revision)):
            # conv and max pool into kept tensors (densenet.deploy.onednn_loop): no fresh pages, no pool indices
            x = onednn_loop.run_stem(self._stem_plan(tuple(x.shape), x.dtype), x, self.workspace)
        else:
            x = self.conv0(x)
            if self.imagenet_stem:
                x = nd.max_pool(x, 3, 2, 1)
        for stage in self.stages:
            x = stage(x)
        return x

    def _stem_plan(self, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
        """The oneDNN stem's plan for images of ``shape`` and ``dtype`` (made again when ``conv0`` changed)."""
        conv = self.conv0
        return self.onednn_plans.get((shape, dtype), lambda: onednn_loop.stem_plan(
            shape, dtype, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.relu, (3, 2, 1)),
            conv.revision, conv.tensors)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → logits ``(N, num_classes)``."""
        check_input(self.config, x)
        compute = self.scale5.dtype
        if x.dtype != compute and x.dtype != self.io_dtype:
            raise ValueError(f"input dtype {x.dtype} differs from the model's {compute}: convert one of them "
                             f"(e.g. model.to({x.dtype}))")
        x = x.to(compute)
        # Autocast off: the clamp bounds are folded for the model's dtype and may lie beyond a lower precision's
        # range (a pruned channel); run a lower precision by optimizing the converted model instead.
        with torch.autocast(x.device.type, enabled=False):
            # O_k = (1/HW) Σ_ij x_ijk   [F4] (over every spatial axis), then O = Wx + b   [F5]
            trunk = self._trunk(x)
            if onednn_loop.applies(trunk) and nd.is_channels_last(trunk):
                # the BN-ReLU, the pool and the classifier in one call (or the first two in one pass)
                logits = onednn_loop.classify(trunk, self.scale5, self.shift5, self.classifier, compute,
                                              self.onednn_plans, self.workspace)
            else:
                logits = self.classifier(affine_relu(trunk, self.scale5, self.shift5).mean(
                    dim=tuple(range(2, 2 + self.config.spatial_dims))))
        return logits if self.io_dtype is None else logits.to(self.io_dtype)


def optimize_for_inference(model: DenseNet, channels_last: bool = True,
                           dtype: torch.dtype | None = None) -> OptimizedDenseNet:
    """A faster model computing ``model.eval()``'s function (logits within float32 rounding, ≤ 1e-4 relative).

    Optimize the model in the dtype it will run in (``optimize_for_inference(model.half())``, not
    ``optimize_for_inference(model).half()``): the folded clamp bounds are kept inside that dtype's range. For
    the same reason an enclosing ``torch.autocast`` does not apply inside the optimized model.

    Args:
        model: a trained :class:`DenseNet` (its training-mode behaviour, dropout and batch statistics, is dropped).
        channels_last: run activations channels-last (fastest with oneDNN and cuDNN).
        dtype: compute in this dtype while taking and returning the model's own (e.g. ``torch.bfloat16`` for a
            float32 model: float32 images in, float32 logits out, bf16 convolutions on a CPU with avx512_bf16 or
            AMX; inputs already in ``dtype`` are taken too). The folding is done in the model's dtype and its
            result rounded once to ``dtype`` where ``dtype`` keeps the model's exponent range (bfloat16 from
            float32); otherwise (float16) the model is converted before folding, as above. ``None``: the model's.
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"optimize_for_inference expects a densenet.DenseNet, got {type(model).__name__}")
    reference = model.features.conv0.weight
    if (dtype or reference.dtype) == torch.bfloat16 and reference.device.type == "cpu":
        capability.warn_slow_bfloat16()
    if dtype is None or dtype == reference.dtype:
        return OptimizedDenseNet(model, channels_last).to(device=reference.device, dtype=reference.dtype)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype} (int8: densenet.quantize)")
    same_range = torch.finfo(dtype).max >= torch.finfo(reference.dtype).max
    source = model if same_range else copy.deepcopy(model).to(dtype)
    optimized = OptimizedDenseNet(source, channels_last).to(device=reference.device, dtype=dtype)
    optimized.io_dtype = reference.dtype
    return optimized
