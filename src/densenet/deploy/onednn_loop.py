"""Inference on oneDNN primitives that are made once (``onednn_loop.cpp``): a dense block's layer loop, the stem, the
transitions and the head.

PyTorch's oneDNN convolution operators (``mkldnn._convolution_pointwise``, ``onednn.qconv_pointwise``) create the
primitive's descriptor and allocate its scratchpad on every call: ~20–35 µs of fixed cost, ~120 calls in a
DenseNet-121 forward — a third of an int8 forward at batch 1 (benchmarks/NOTES.md, "A native layer loop"). Here a
block's loop is planned once per input shape (:class:`BlockPlan`: every convolution's primitive, its weights
reordered into the primitive's layout, bias and int8 scales) and run in C++ on the block's buffer, the clamp
scratch and a per-thread scratchpad, each convolution one ``execute``. Per layer ``l`` [F2]::

    r = clamp([x_0, …, x_{l−1}], lo_l, hi_l)      y = σ(W1_l ∗ r + b1_l)      x_l = W2_l ∗ y

in float32 and bfloat16 (the folded network, :mod:`densenet.deploy.optimize`) and on u8 codes with the
requantization fused [Q1] (:mod:`densenet.deploy.int8`) — the same arithmetic as the TorchScript loop of
:mod:`densenet.deploy.layer_loop`; an int8 code can differ by one where a requantized value falls on a tie.

oneDNN itself comes from Intel's ``onednn-cpu-gomp`` wheels (a dependency on Linux x86-64, with the headers in
``onednn-devel-cpu-gomp``; PyTorch links its own copy privately and exports none of it). They use GNU OpenMP, the
runtime PyTorch's CPU wheels load, so both share one thread pool. The source is compiled on first use
(:mod:`densenet.extensions`); where the wheels are missing or the build fails, one warning says why and the
TorchScript loop serves. ``DENSENET_ONEDNN_LOOP=0`` turns it off (to compare the two).

Around the blocks, in the same way: the ImageNet stem's conv and max pool (:func:`stem_plan`; ATen's max pool also
writes int64 indices, and every fresh output faults its pages in), a transition's clamp, 2×2 average pool and 1×1
conv (:func:`transition_plan`), each into the module's kept tensors, and the head: the final BN-ReLU and global
pool in one pass (:func:`pooled_features`), with the classifier in the same call (:func:`classify`).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from densenet import capability
from densenet.deploy.layer_loop import hooked
from densenet.deploy.revision import Revision
from densenet.extensions import build, first_line

SWITCH = "DENSENET_ONEDNN_LOOP"
LIBRARY, HEADERS = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"  # the wheels: libdnnl.so, and its include/
_SOURCE = Path(__file__).with_name("onednn_loop.cpp")
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.uint8: "int8"}
_BYTES = torch.empty(0, dtype=torch.uint8)  # the scratchpad's dtype, for Workspace.get
_FLOATS = torch.empty(0)  # float32 work tensors' dtype
_module: ModuleType | bool | None = None  # None: not tried yet; False: tried, unavailable


def _installed_file(distribution: str, suffix: str) -> Path:
    """The installed file of ``distribution`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{distribution} is not installed (pip install {LIBRARY} {HEADERS})") from None
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate()).resolve()
    raise RuntimeError(f"{distribution} has no {suffix}")


def _build() -> ModuleType:
    """Compile and load the loop against the installed oneDNN; checks that the headers and the library agree."""
    library = _installed_file(LIBRARY, "/libdnnl.so")
    header = _installed_file(HEADERS, "/oneapi/dnnl/dnnl.hpp")
    include = header.parents[2]  # …/include (its -I comes before PyTorch's own, newer oneDNN headers)
    module = build("densenet_onednn_loop", _SOURCE, ["-O3", "-march=native", "-fopenmp"],
                   [f"-L{library.parent}", "-ldnnl", f"-Wl,-rpath,{library.parent}", "-fopenmp"],
                   include_paths=(str(include),), python_module=True)
    if module.header_version // 100 != module.library_version() // 100:
        raise RuntimeError(f"oneDNN headers {module.header_version} and library {module.library_version()} differ")
    return module


def module() -> ModuleType | None:
    """The built extension, or None (switched off, or not buildable: one warning the first time)."""
    global _module
    if os.environ.get(SWITCH, "1") == "0":
        return None
    if _module is None:
        try:
            _module = _build()
        except Exception as error:  # the wheels missing, no compiler, a failed build: the TorchScript loop serves
            if platform.system() == "Linux" and platform.machine() == "x86_64":  # where the wheels are a dependency
                warnings.warn(f"densenet: the oneDNN layer loop is unavailable ({first_line(error)}); inference "
                              f"uses PyTorch's oneDNN operators (same arithmetic, slower at small batches). Set "
                              f"{SWITCH}=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
            _module = False
    return _module or None


def _extension() -> ModuleType:
    """The built extension, for making plans (only called where :func:`applies` said yes)."""
    extension = module()
    if extension is None:
        raise RuntimeError("the oneDNN layer loop is unavailable")
    return extension


def applies(x: Tensor) -> bool:
    """Whether the loop serves a block input ``x``: a CPU tensor in float32, bfloat16 (where this CPU has oneDNN's
    bfloat16, :func:`densenet.capability.onednn_bfloat16`) or u8 codes, outside ``torch.compile``, not switched off,
    and the extension built."""
    if x.device.type != "cpu" or x.dtype not in _DTYPES or torch.compiler.is_compiling():
        return False
    if x.dtype == torch.bfloat16 and not capability.onednn_bfloat16():
        return False
    return module() is not None


def float_bound(bound: Tensor | None, channels: int, default: float) -> Tensor:
    """A clamp bound as ``(channels,)`` float32 (``default`` where there is none)."""
    if bound is None:
        return torch.full((channels,), default)
    return bound.detach().flatten().float().contiguous()


def plan(shape: tuple[int, ...], growth_rate: int, dtype: torch.dtype, lo: list[Tensor], hi: list[Tensor],
         weight1: list[Tensor], bias1: list[Tensor], weight2: list[Tensor],
         quantization: tuple[list[Any], ...] | None = None) -> Any:
    """A :class:`BlockPlan` for block inputs of ``shape`` ``(N, C_0, *spatial)`` in ``dtype`` (float32, bfloat16,
    or uint8 codes). ``lo``/``hi``: per layer ``(C_l,)`` clamp bounds in float32 (u8 codes for int8);
    ``weight*``: ``(O, I, *k)`` (float, or int8 codes); ``quantization`` (int8): per layer the 1×1 conv's weight
    scales, bottleneck code scale and zero point, the 3×3 conv's weight scales, new map's code scale and zero
    point."""
    extension = _extension()
    name = _DTYPES[dtype]
    lo_bits, hi_bits = ([bf16_bits(bound) for bound in bounds] if name == "bfloat16" else [] for bounds in (lo, hi))
    if name == "bfloat16":
        weight1 = [weight.to(torch.bfloat16) for weight in weight1]
        weight2 = [weight.to(torch.bfloat16) for weight in weight2]
    if quantization is None:
        quantization = ([], [], [], [], [], [])
    bias1 = [torch.empty(0) if bias is None else bias.detach().float() for bias in bias1]
    return extension.BlockPlan(list(shape), growth_rate, [bound.contiguous() for bound in lo],
                               [bound.contiguous() for bound in hi], lo_bits, hi_bits,
                               [weight.detach().contiguous() for weight in weight1], bias1,
                               [weight.detach().contiguous() for weight in weight2], name, *quantization)


def run(block_plan: Any, buffer: Tensor, scratch: Tensor, workspace: Any) -> None:
    """Run ``block_plan`` on ``buffer`` (flat; the block input already in the first ``C_0`` channels of each row)
    with ``scratch`` and the per-thread work tensors of ``workspace`` (a
    :class:`~densenet.deploy.optimize.Workspace`): the bottleneck, the new map and oneDNN's scratchpad, sized by the
    plan."""
    middle_elements, fresh_elements = block_plan.work_elements()
    middle = workspace.get("onednn_middle", middle_elements, buffer)
    fresh = workspace.get("onednn_fresh", fresh_elements, buffer)
    scratchpad = workspace.get("onednn_scratchpad", block_plan.scratchpad_bytes(), _BYTES)
    block_plan.run(buffer, scratch, middle, fresh, scratchpad)


def bf16_bits(bound: Tensor) -> Tensor:
    """A float32 bound rounded to bfloat16, as its bit patterns (what a bf16 clamp writes where it clamps)."""
    return bound.to(torch.bfloat16).view(torch.int16)


def transition_plan(shape: tuple[int, ...], dtype: torch.dtype, lo: Tensor | None, hi: Tensor | None, weight: Tensor,
                    bias: Tensor | None, quantization: tuple[Tensor, float, int] | None = None) -> Any:
    """A ``TransitionPlan`` for inputs of ``shape`` ``(N, C, *spatial)`` (even sides) in ``dtype`` (float32,
    bfloat16, or uint8 codes): ``W ∗ pool(clamp(x, lo, hi)) + b`` [F3], ``weight`` ``(O, C, 1…)``. int8: ``lo``/
    ``hi`` are u8 code bounds, ``weight`` int8 codes, ``quantization`` = (weight scales, output code scale and zero
    point) [Q1]."""
    extension = _extension()
    empty = torch.empty(0, dtype=torch.int16)
    if dtype == torch.uint8:
        low, high, bits = lo.flatten().contiguous(), hi.flatten().contiguous(), (empty, empty)
    else:
        low, high = float_bound(lo, shape[1], -math.inf), float_bound(hi, shape[1], math.inf)
        bits = (bf16_bits(low), bf16_bits(high)) if dtype == torch.bfloat16 else (empty, empty)
        weight = weight.to(dtype)
    weight_scale, code_scale, code_zero = quantization or (torch.empty(0), 1.0, 0)
    return extension.TransitionPlan(list(shape), low, high, *bits, weight.detach().contiguous(),
                                    torch.empty(0) if bias is None else bias.detach().float(), _DTYPES[dtype],
                                    weight_scale, code_scale, code_zero)


def run_transition(transition: Any, x: Tensor, workspace: Any) -> Tensor:
    """Run ``transition`` (a :func:`transition_plan`) on ``x`` (channels-last) into the per-thread tensors of
    ``workspace``; returns ``(N, O, *spatial/2)``, channels-last (a view of the workspace: valid until the next
    call)."""
    shape = transition.output_shape()
    clamped = workspace.get("clamped", x.numel(), x)
    pooled = workspace.get("pooled", x.numel() >> (x.dim() - 2), x)
    out = workspace.get("out", math.prod(shape), x)
    transition.run(x, clamped, pooled, out, workspace.get("scratchpad", transition.scratchpad_bytes(), _BYTES))
    return out.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def stem_plan(shape: tuple[int, ...], dtype: torch.dtype, weight: Tensor, bias: Tensor | None, stride: int,
              padding: int, relu: bool, pool: tuple[int, int, int],
              quantization: tuple[float, int, Tensor, float, int] | None = None) -> Any:
    """A ``StemPlan`` for images of ``shape`` ``(N, C, *spatial)``: the convolution ``σ(W ∗ x + b)`` (``weight``
    ``(O, C, *k)``), then the max pool ``pool = (kernel, stride, padding)``; in ``dtype`` float32 or bfloat16, or
    ``torch.uint8`` for int8 — float32 images encoded with their code, ``weight`` int8 codes and ``quantization`` =
    (image code scale, zero point, weight scales, output code scale, zero point)."""
    extension = _extension()
    if dtype != torch.uint8:
        weight = weight.to(dtype)
    return extension.StemPlan(list(shape), weight.detach().contiguous(),
                              torch.empty(0) if bias is None else bias.detach().float(), stride, padding, relu,
                              _DTYPES[dtype], *pool, *(quantization or (1.0, 0, torch.empty(0), 1.0, 0)))


def run_stem(stem: Any, x: Tensor, workspace: Any, codes: bool = False) -> Tensor:
    """Run ``stem`` (a :func:`stem_plan`) on ``x`` (channels-last) into the per-thread tensors of ``workspace``;
    returns the pooled map ``(N, O, *spatial')``, channels-last (a view of the workspace: valid until the next
    call). ``codes``: an int8 stem (its maps are u8 codes)."""
    conv_shape, shape = stem.conv_shape(), stem.output_shape()
    like = _BYTES if codes else x
    image = workspace.get("stem_image", x.numel() if codes else 0, _BYTES)
    conv_out = workspace.get("stem_conv", math.prod(conv_shape), like)
    out = workspace.get("stem_pooled", math.prod(shape), like)
    stem.run(x, image, conv_out, out, workspace.get("stem_scratchpad", stem.scratchpad_bytes(), _BYTES))
    return out.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def pooled_features(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``(1/S) Σ_s σ(a·x + b)`` per channel [F4] — the final BN-ReLU and the global average pool in one pass — of a
    channels-last ``(N, C, *spatial)`` map (float32, bfloat16, or u8 codes with their code folded into ``a``,
    ``b``); ``(N, C)`` float32."""
    extension = _extension()
    return extension.relu_affine_mean(x, scale.detach().flatten().float().contiguous(),
                                      shift.detach().flatten().float().contiguous())


def classify(x: Tensor, scale: Tensor, shift: Tensor, classifier: nn.Module, dtype: torch.dtype, plans: PlanCache,
             workspace: Any) -> Tensor:
    """The logits ``W·p + b`` [F5] of the pooled features ``p = (1/S) Σ_s σ(a·x + b)`` [F4] of a channels-last map
    ``x`` ``(N, C, *spatial)``: in one call (``HeadPlan``, kept in ``plans``; its work tensors from ``workspace``) in
    the classifier's dtype where it is an unhooked float32 or bfloat16 ``nn.Linear``; otherwise the features of
    :func:`pooled_features`, in ``dtype``, through the classifier module (its hooks run)."""
    weight, bias = getattr(classifier, "weight", None), getattr(classifier, "bias", None)
    if type(classifier) is not nn.Linear or weight.dtype not in (torch.float32, torch.bfloat16) or hooked(
            [classifier]):
        return classifier(pooled_features(x, scale, shift).to(dtype))
    batch, channels = x.shape[:2]
    tensors = [tensor for tensor in (weight, bias, scale, shift) if tensor is not None]
    key = ("head", batch, *(id(tensor) for tensor in tensors))  # a replaced tensor: another key
    plan = plans.get(key, lambda: _extension().HeadPlan(
        batch, weight.detach(), torch.empty(0) if bias is None else bias.detach(), scale.detach().flatten(),
        shift.detach().flatten()), watched=lambda: tensors)
    pooled = workspace.get("head_pooled", batch * channels, _FLOATS)
    features = workspace.get("head_features", batch * channels, weight)
    logits = weight.new_empty(batch, weight.shape[0])  # returned: a fresh tensor
    plan.run(x, pooled, features, logits, workspace.get("head_scratchpad", plan.scratchpad_bytes(), _BYTES))
    return logits


class PlanCache:
    """Plans by input shape and dtype (and other values built once per input shape: int8 packed weights, the
    TorchScript loop's arguments), each made again when its owner's :class:`~densenet.deploy.revision.Revision`
    counts a replaced weight or a cleared cache, or when one of the tensors it was made from changed in place (their
    version counters, read in one C++ call: ``VersionWatch``; a tensor made under ``torch.inference_mode()`` has
    none, so only its replacement is seen — as :meth:`densenet.deploy.optimize.FrozenConv.packed_weight` sees it).
    Copies and pickles start empty (a cache; the plans themselves are neither copyable nor picklable)."""

    def __init__(self) -> None:
        # key → (the owner's revision and its count then, the version watch (None: nothing watched), the plan)
        self._plans: dict[tuple[Any, ...], tuple[Revision | None, int, Any, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], make: Callable[[], Any], revision: Revision | None = None,
            watched: Callable[[], Sequence[Tensor]] = tuple) -> Any:
        """The plan for ``key``, made by ``make()`` on first use, after ``revision.weights`` moved on, or after a
        change in place to one of the tensors ``watched()`` returns (read when the plan is made)."""
        count = 0 if revision is None else revision.weights
        entry = self._plans.get(key)
        if (entry is None or entry[0] is not revision or entry[1] != count
                or (entry[2] is not None and entry[2].changed())):
            with self._lock:
                tensors = list(watched())
                watch = _extension().VersionWatch(tensors) if tensors else None
                entry = self._plans[key] = (revision, count, watch, make())
        return entry[3]

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
