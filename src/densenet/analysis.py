"""Closed-form analysis of a DenseNet from its config alone: shapes, parameters, MACs, activation memory.

This is the tutorial's table with real numbers. Nothing here builds a module: every count is derived from
:class:`~densenet.config.DenseNetConfig` with the formulas

- F8: a convolution has ``K^d·C_in·C_out`` weights (``(K^d·C_in + 1)·C_out`` with a bias; DenseNet's convs
  carry none because batch norm follows) in ``d = spatial_dims`` dimensions — ``K·K`` for images, ``K`` for
  signals, ``K·K·K`` for volumes — a batch norm ``2·C`` (γ and β), a linear layer ``(C_in + 1)·C_out``;
- F9: a conv or pool maps a side ``W`` to ``⌊(W − K + 2P)/S⌋ + 1``, along each spatial axis (the same for all);

so the tests can hold them against the parameters and shapes of a real model — two independent derivations.

MACs count multiply-accumulates of the convolutions and the classifier, in the paper's order (transition conv
before its pool), which is how torchvision's published figures are counted; ``macs_executed`` counts what this
library runs (transition pool before the conv: ``1/2^d`` of the pixels). A conv's MACs are its weights times the
output positions, ``side^d``; activation memory counts ``side^d`` values per map.
"""

from __future__ import annotations

from dataclasses import dataclass

from densenet.config import DenseNetConfig

Shape = tuple[int, ...]
_F32, _BOOL, _INT64 = 4, 1, 8  # bytes per saved float32, bool and int64 value


def _cube(side: int, dims: int) -> Shape:
    """The spatial part of a shape: ``side`` along each of the ``d`` axes."""
    return (side,) * dims


def _kernel(size: int, dims: int, sep: str = "×") -> str:
    """A ``K^d`` kernel as written in the table: ``3×3`` (2D), ``3`` (1D), ``3×3×3`` (3D); with ``sep="·"`` the
    factors of F8."""
    return sep.join([str(size)] * dims)


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """``⌊(W − K + 2P)/S⌋ + 1`` [F9]."""
    # ⌊(W − K + 2P)/S⌋ + 1   [F9]
    return (size - kernel + 2 * padding) // stride + 1


@dataclass(frozen=True)
class Row:
    """One row of the table: a stage of the network (or, in ``children``, one dense layer)."""

    name: str
    input_shape: Shape
    output_shape: Shape
    kernel: str
    stride: str
    padding: str
    param_formula: str
    params: int
    macs: int
    macs_executed: int
    children: tuple[Row, ...] = ()


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes autograd keeps between forward and backward for one float32 training step (parameters excluded).

    ``reference`` is the plain autograd implementation (``memory_efficient=False``): each layer keeps its
    concatenated input and its BN-ReLU output, so it grows with the square of the depth. ``memory_efficient`` is
    the explicit path: per block the feature buffer, per layer the bottleneck output (not in 3D, where it is
    recomputed) and the dropout mask, per channel its batch statistics — linear in depth — and no BN-ReLU output in
    the stem or the transitions.
    """

    reference: int
    memory_efficient: int
    per_sample_reference: int
    per_sample_memory_efficient: int


class _MemoryTally:
    """Saved-for-backward bytes of both implementations, per sample and batch-independent."""

    def __init__(self) -> None:
        self.per_sample = {"reference": 0, "memory_efficient": 0}
        self.fixed = {"reference": 0, "memory_efficient": 0}

    def add(self, per_sample: int = 0, fixed: int = 0, only: str | None = None) -> None:
        for key in (only,) if only else self.per_sample:
            self.per_sample[key] += per_sample
            self.fixed[key] += fixed

    def result(self, batch_size: int) -> ActivationMemory:
        total = {key: self.per_sample[key] * batch_size + self.fixed[key] for key in self.per_sample}
        return ActivationMemory(total["reference"], total["memory_efficient"], self.per_sample["reference"],
                                self.per_sample["memory_efficient"])


@dataclass(frozen=True)
class Summary:
    """The table for one config and input size, with totals."""

    config: DenseNetConfig
    input_size: int
    batch_size: int
    rows: tuple[Row, ...]
    params: int
    bn_buffers: int
    macs: int
    macs_executed: int
    bn_layers: int
    activation_memory: ActivationMemory

    def to_dict(self) -> dict:
        """A JSON-able dict of the whole summary."""

        def row_dict(row: Row) -> dict:
            data = {k: getattr(row, k) for k in Row.__dataclass_fields__ if k != "children"}
            data["children"] = [row_dict(child) for child in row.children]
            return data

        return {
            "config": self.config.to_dict(),
            "input_size": self.input_size,
            "batch_size": self.batch_size,
            "rows": [row_dict(row) for row in self.rows],
            "totals": {
                "params": self.params,
                "bn_buffers": self.bn_buffers,
                "bn_layers": self.bn_layers,
                "macs": self.macs,
                "macs_executed": self.macs_executed,
                "activation_bytes_reference": self.activation_memory.reference,
                "activation_bytes_memory_efficient": self.activation_memory.memory_efficient,
            },
        }


def _dense_layer_row(config: DenseNetConfig, index: int, channels: int, side: int) -> Row:
    """Row of dense layer ``index`` reading ``channels`` maps: ``K^d·C_in·C_out`` weights per conv (no bias) and
    ``2·C`` per batch norm [F8], its MACs and shapes."""
    k, d = config.growth_rate, config.spatial_dims
    shape_in = (channels, *_cube(side, d))
    pixels, taps = side**d, 3**d  # output positions; weights per input-output channel pair of the 3^d conv
    if config.bottleneck:
        width = config.bn_size * k
        # BN1 2·C_in, 1^d conv 1·C_in·w, BN2 2·w, 3^d conv 3^d·w·k with w = bn_size·k (no biases)   [F8]
        params = 2 * channels + channels * width + 2 * width + taps * width * k
        formula = (f"2·{channels} + {_kernel(1, d, '·')}·{channels}·{width} + 2·{width} + "
                   f"{_kernel(3, d, '·')}·{width}·{k} = {params:,}")
        macs = (channels * width + taps * width * k) * pixels
        kernel = f"{_kernel(1, d)}, {_kernel(3, d)}"
    else:
        # BN 2·C_in, 3^d conv 3^d·C_in·k (no bias)   [F8]
        params = 2 * channels + taps * channels * k
        formula = f"2·{channels} + {_kernel(3, d, '·')}·{channels}·{k} = {params:,}"
        macs = taps * channels * k * pixels
        kernel = _kernel(3, d)
    return Row(f"denselayer{index}", shape_in, (k, *_cube(side, d)), kernel, "1", "0, 1" if config.bottleneck else "1",
               formula, params, macs, macs)


def summarize(config: DenseNetConfig, input_size: int = 224, batch_size: int = 1) -> Summary:
    """The tutorial's table for ``config`` at ``input_size`` along each of its ``spatial_dims`` axes (``224×224``
    for images): parameters by [F8] (``K^d·C_in·C_out`` per conv, no bias; ``2·C`` per batch norm;
    ``(C_in + 1)·C_out`` for the classifier), shapes by ``⌊(W − K + 2P)/S⌋ + 1`` [F9] per axis.

    Raises:
        ValueError: the input is smaller than the network accepts, or the batch size is not positive.
    """
    config.check_input_size(input_size, what="input size")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    image = (config.in_chans, *_cube(input_size, config.spatial_dims))
    bn_channels: list[int] = []  # the width of every batch norm, in order
    memory = _MemoryTally()
    memory.add(per_sample=config.in_chans * input_size**config.spatial_dims * _F32)  # conv0 keeps its input
    stem, side = _stem_rows(config, input_size, memory, bn_channels)
    rows = [Row("Input", image, image, "", "", "", "", 0, 0, 0), *stem]
    channels = config.num_init_features
    for block_index, num_layers in enumerate(config.block_config, start=1):
        rows.append(_block_row(config, block_index, num_layers, channels, side, memory, bn_channels))
        channels = rows[-1].output_shape[0]
        if block_index < len(config.block_config):
            rows.append(_transition_row(config, block_index, channels, side, memory, bn_channels))
            channels, side = rows[-1].output_shape[:2]  # (C, side, …): every axis has the same side
    rows += _head_rows(config, channels, side, memory, bn_channels)

    return Summary(
        config=config,
        input_size=input_size,
        batch_size=batch_size,
        rows=tuple(rows),
        params=sum(row.params for row in rows),
        bn_buffers=sum(2 * c + 1 for c in bn_channels),
        macs=sum(row.macs for row in rows),
        macs_executed=sum(row.macs_executed for row in rows),
        bn_layers=len(bn_channels),
        activation_memory=memory.result(batch_size),
    )


def _stem_rows(config: DenseNetConfig, side: int, memory: _MemoryTally, bn_channels: list[int]
               ) -> tuple[list[Row], int]:
    """Conv1 (and for the ImageNet stem its BN and the max-pool Pool1), and the side of the maps after it."""
    c_in, c0, d = config.in_chans, config.num_init_features, config.spatial_dims
    if config.stem != "imagenet":
        # 3^d·C_in·C_0 conv weights, no bias and no BN after it   [F8]
        params = 3**d * c_in * c0
        return [Row("Conv1", (c_in, *_cube(side, d)), (c0, *_cube(side, d)), _kernel(3, d), "1", "1",
                    f"{_kernel(3, d, '·')}·{c_in}·{c0} = {params:,}", params, params * side**d, params * side**d)], side
    # ⌊(W − K + 2P)/S⌋ + 1 through the 7^d/2 pad 3 conv, then the 3^d/2 pad 1 max-pool, along each axis   [F9]
    conv_side = output_size(side, 7, 2, 3)
    # 7^d·C_in·C_0 conv weights (no bias) + BN 2·C_0   [F8]
    params = 7**d * c_in * c0 + 2 * c0
    macs = 7**d * c_in * c0 * conv_side**d
    pool_side = output_size(conv_side, 3, 2, 1)
    bn_channels.append(c0)
    # norm0's μ and 1/σ; the reference also keeps the conv0 output (for norm0), the BN-ReLU output (for pool0)
    # and the max-pool indices, all of which the explicit stem recomputes from the input image
    memory.add(fixed=2 * c0 * _F32)
    memory.add(per_sample=2 * c0 * conv_side**d * _F32 + c0 * pool_side**d * _INT64, only="reference")
    return [Row("Conv1", (c_in, *_cube(side, d)), (c0, *_cube(conv_side, d)), _kernel(7, d), "2", "3",
                f"{_kernel(7, d, '·')}·{c_in}·{c0} + BN 2·{c0} = {params:,}", params, macs, macs),
            Row("Pool1", (c0, *_cube(conv_side, d)), (c0, *_cube(pool_side, d)), f"{_kernel(3, d)} max", "2", "1",
                "0", 0, 0, 0)], pool_side


def _block_row(config: DenseNetConfig, block_index: int, num_layers: int, channels: int, side: int,
               memory: _MemoryTally, bn_channels: list[int]) -> Row:
    """Dense block ``block_index`` reading ``channels`` maps: its layers' rows as children, their sums [F8]."""
    k, width, d = config.growth_rate, config.bn_size * config.growth_rate, config.spatial_dims
    pixels = side**d
    layers = []
    for layer_index in range(num_layers):
        layer_channels = channels + layer_index * k
        layers.append(_dense_layer_row(config, layer_index + 1, layer_channels, side))
        bn_channels += [layer_channels, width] if config.bottleneck else [layer_channels]
        # reference: the torch.cat output (kept by norm1) and the BN-ReLU output (kept by conv1), μ and 1/σ
        memory.add(per_sample=2 * layer_channels * pixels * _F32, fixed=2 * layer_channels * _F32, only="reference")
        if config.bottleneck:
            # both keep BN2's μ and 1/σ and the conv1 output (the explicit block in 3D recomputes it); the reference
            # also its BN-ReLU (kept by conv2)
            memory.add(fixed=2 * width * _F32)
            memory.add(per_sample=width * pixels * _F32, only="reference" if d == 3 else None)
            memory.add(per_sample=width * pixels * _F32, only="reference")
        if config.drop_rate > 0:
            memory.add(per_sample=k * pixels * _BOOL)  # the dropout mask
    out_channels = channels + num_layers * k
    # the block output (reference: the final torch.cat, kept by the next BN; explicit: the feature buffer,
    # shared with the next BN), and in the explicit block the batch μ and 1/σ of every buffer channel
    memory.add(per_sample=out_channels * pixels * _F32)
    memory.add(fixed=2 * out_channels * _F32, only="memory_efficient")
    block_params = sum(row.params for row in layers)
    block_macs = sum(row.macs for row in layers)
    ones, threes = _kernel(1, d, "·"), _kernel(3, d, "·")
    per_layer = (f"2·C + {ones}·C·{width} + 2·{width} + {threes}·{width}·{k}" if config.bottleneck
                 else f"2·C + {threes}·C·{k}")
    kernels = f"{_kernel(1, d)}, {_kernel(3, d)}" if config.bottleneck else _kernel(3, d)
    return Row(f"Dense Block {block_index}", (channels, *_cube(side, d)), (out_channels, *_cube(side, d)),
               f"[{kernels}] × {num_layers}", "1",
               "0, 1" if config.bottleneck else "1",
               f"Σ over C = {channels}, {channels + k}, …, {out_channels - k} of {per_layer} = {block_params:,}",
               block_params, block_macs, block_macs, tuple(layers))


def _transition_row(config: DenseNetConfig, block_index: int, channels: int, side: int, memory: _MemoryTally,
                    bn_channels: list[int]) -> Row:
    """Transition ``block_index``: BN, 1^d conv to ``⌊θ·C⌋`` maps and the 2^d average pool."""
    d = config.spatial_dims
    reduced = config.transition_channels(channels)
    pooled = output_size(side, 2, 2, 0)
    # BN 2·C + 1^d conv 1·C·⌊θ·C⌋ (no bias)   [F8]
    params = 2 * channels + channels * reduced
    bn_channels.append(channels)
    # pooled maps (kept by the conv), the BN's μ and 1/σ; the reference also keeps the BN-ReLU output
    memory.add(per_sample=channels * pooled**d * _F32, fixed=2 * channels * _F32)
    memory.add(per_sample=channels * side**d * _F32, only="reference")
    return Row(f"Transition {block_index}", (channels, *_cube(side, d)), (reduced, *_cube(pooled, d)),
               f"{_kernel(1, d)} conv, {_kernel(2, d)} avg", "1, 2", "0",
               f"2·{channels} + {_kernel(1, d, '·')}·{channels}·{reduced} = {params:,}",
               params, channels * reduced * side**d, channels * reduced * pooled**d)


def _head_rows(config: DenseNetConfig, channels: int, side: int, memory: _MemoryTally,
               bn_channels: list[int]) -> list[Row]:
    """The final BN-ReLU, the global average pool and (with classes) the classifier and softmax."""
    d = config.spatial_dims
    bn_channels.append(channels)
    memory.add(per_sample=channels * side**d * _F32, fixed=2 * channels * _F32)  # final BN-ReLU output, μ and 1/σ
    rows = [Row("Final BN-ReLU", (channels, *_cube(side, d)), (channels, *_cube(side, d)), "", "", "",
                f"2·{channels} = {2 * channels:,}", 2 * channels, 0, 0),
            Row("Global Avg Pool", (channels, *_cube(side, d)), (channels, *_cube(1, d)), f"{_kernel(side, d)} avg",
                "1", "0", "0", 0, 0, 0)]
    n = config.num_classes
    if n:
        memory.add(per_sample=channels * _F32)  # pooled features, kept by the classifier
        # the classifier, a linear layer with a bias: (C_in + 1)·C_out   [F8]
        params = (channels + 1) * n
        rows += [Row("Fully Connected", (channels,), (n,), "", "", "", f"({channels} + 1)·{n} = {params:,}",
                     params, channels * n, channels * n),
                 Row("Softmax", (n,), (n,), "", "", "", "0", 0, 0, 0)]
    return rows


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one float32 training step holds at least (closed form): the saved activations of the path the config
    trains with (:class:`ActivationMemory`), the weights and BN buffers, their gradients and the optimiser's
    per-parameter state. The measured peak is higher (the backward's transient buffers, allocator slack: 1.9× at
    DenseNet-BC-100 32×32 batch 64 and 3.5× at densenet121 224×224 batch 16 in ``benchmarks/NOTES.md``), so this is
    a lower bound."""

    activations: int
    weights: int
    gradients: int
    optimizer_state: int

    @property
    def total(self) -> int:
        """The sum of the parts."""
        return self.activations + self.weights + self.gradients + self.optimizer_state


def training_memory(config: DenseNetConfig, input_size: int, batch_size: int,
                    optimizer_states: int = 1) -> TrainingMemory:
    """:class:`TrainingMemory` of a step at ``input_size × input_size`` and ``batch_size``: activations as
    :func:`summarize` counts them (explicit block when ``config.memory_efficient``, else plain autograd), 4 bytes per
    parameter and BN buffer [F8], 4 per gradient, ``4 · optimizer_states`` per parameter (SGD's momentum: 1; AdamW's
    two moments: 2)."""
    summary = summarize(config, input_size, batch_size)
    memory = summary.activation_memory
    activations = memory.memory_efficient if config.memory_efficient else memory.reference
    return TrainingMemory(activations, (summary.params + summary.bn_buffers) * _F32, summary.params * _F32,
                          summary.params * _F32 * optimizer_states)
