"""``densenet list`` and ``densenet summary``: the registered models and the closed-form table of one (F8, F9)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from densenet.analysis import Row, Summary, summarize
from densenet.cli.common import positive_int
from densenet.config import DenseNetConfig
from densenet.pretrained import PretrainedWeights, list_pretrained
from densenet.registry import get_config, list_models


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``summary`` and ``list`` to the ``densenet`` subcommands."""
    summary = commands.add_parser("summary", help="closed-form table: shapes, parameters, MACs, memory")
    summary.add_argument("model", help="registered model name (see `densenet list`) or a save_pretrained directory")
    summary.add_argument("--input-size", type=positive_int, default=None,
                         help="input side (default 224, CIFAR models 32)")
    summary.add_argument("--batch-size", type=positive_int, default=1, help="batch size for the activation memory")
    summary.add_argument("--spatial-dims", type=int, choices=(1, 2, 3), default=None,
                         help="1 (signals), 2 (images) or 3 (volumes); default: the model's own (2 for a name)")
    summary.add_argument("--detail", action="store_true", help="list every dense layer")
    summary.add_argument("--json", action="store_true", help="print JSON instead of the table")
    summary.set_defaults(handler=cmd_summary)

    listing = commands.add_parser("list", help="registered model names")
    listing.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'densenet_bc*'")
    listing.add_argument("--pretrained", action="store_true",
                         help="only names with pretrained weights, with each file's metrics")
    listing.add_argument("--json", action="store_true", help="with --pretrained: print JSON")
    listing.set_defaults(handler=cmd_list)


def cmd_summary(args: argparse.Namespace) -> int:
    """``densenet summary``: the closed-form table of a model."""
    title, config = _resolve_config(args.model)
    if args.spatial_dims is not None:
        config = config.replace(spatial_dims=args.spatial_dims)
    size = args.input_size if args.input_size is not None else config.default_input_size
    summary = summarize(config, size, args.batch_size)
    weights = list_pretrained(title) if config.spatial_dims == 2 else []  # image weights: they do not apply as they are
    if args.json:
        print(json.dumps({"model": title, **summary.to_dict(),
                          "pretrained": [_weights_dict(entry) for entry in weights]}, indent=2))
    else:
        print(format_summary(title, summary, args.detail))
        for entry in weights:
            print(f"pretrained weights     {_weights_line(entry)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``densenet list``: the registered model names (``--pretrained``: those with weights, one line per file)."""
    names = list_models(args.pattern)
    if not args.pretrained:
        print("\n".join(names))
        return 0
    entries = [entry for entry in list_pretrained() if entry.architecture in names]
    if args.json:
        print(json.dumps([_weights_dict(entry) for entry in entries], indent=2))
    else:
        print("\n".join(_weights_line(entry) for entry in entries))
    return 0


def _weights_line(entry: PretrainedWeights) -> str:
    metrics = "  ".join(f"{key} {value:.3f}" for key, value in entry.metrics.items())
    return (f"{entry.name:<26}  {metrics}  {entry.num_params:,} parameters  {entry.file_size_mb:.1f} MB  "
            f"({entry.source})")


def _weights_dict(entry: PretrainedWeights) -> dict[str, Any]:
    return {"name": entry.name, "architecture": entry.architecture, "tag": entry.tag, "url": entry.url,
            "metrics": entry.metrics, "num_params": entry.num_params, "file_size_mb": entry.file_size_mb,
            "preprocessing": entry.preprocessing.to_dict(), "source": entry.source}


def _resolve_config(name: str) -> tuple[str, DenseNetConfig]:
    """A registered model name, or a ``save_pretrained`` directory."""
    if Path(name).is_dir():
        from densenet.weights import read_pretrained_config

        config, meta = read_pretrained_config(name)
        return meta.name or name, config
    return name, get_config(name)


def format_summary(title: str, summary: Summary, detail: bool) -> str:
    """The tutorial's table as text: one row per stage, dense layers too with ``detail``."""
    header = ("Layer", "Input", "Output", "Kernel", "Stride", "Pad", "Params", "MACs", "Parameter formula (F8)")
    lines: list[tuple[str, ...]] = []

    def add(row: Row, indent: str = "") -> None:
        lines.append((indent + row.name, _format_shape(row.input_shape), _format_shape(row.output_shape), row.kernel,
                      row.stride, row.padding, f"{row.params:,}", _format_count(row.macs), row.param_formula))

    for row in summary.rows:
        add(row)
        if detail:
            for child in row.children:
                add(child, "  ")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)) + "  " + cells[-1]

    memory = summary.activation_memory
    out = [
        f"{title}: input {_format_shape(summary.rows[0].input_shape)}, "
        f"{summary.config.num_classes} classes",
        render(header),
        render(tuple("-" * len(h) for h in header)),
        *(render(line).rstrip() for line in lines),
        "",
        f"trainable parameters   {summary.params:,}",
        f"BN buffers             {summary.bn_buffers:,} ({summary.bn_layers} batch norms: mean, variance, count)",
        f"MACs (conv + linear)   {summary.macs:,} ({summary.macs / 1e9:.3f} G; paper order: conv, then pool)",
        f"MACs executed          {summary.macs_executed:,} ({summary.macs_executed / 1e9:.3f} G; pool before conv)",
        f"activation memory      {_format_bytes(memory.memory_efficient)} explicit block (memory_efficient=True), "
        f"{_format_bytes(memory.reference)} plain autograd: one float32 training step at batch {summary.batch_size}",
    ]
    return "\n".join(out)


def _format_count(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3f}{unit}"
    return str(value)


def _format_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in shape)


def _format_bytes(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"
