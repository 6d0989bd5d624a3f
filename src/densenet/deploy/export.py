"""Export a DenseNet to ONNX, TorchScript or a ``torch.export`` ExportedProgram, with a dynamic batch size, and
check the exported file against PyTorch before it is put in place.

The exported graph is the eval-mode model in plain operations (``torch.cat``, batch norm, conv): pool-first
transitions are kept — four times fewer MACs there than torchvision's own export — and ONNX Runtime folds each
batch norm that follows a conv into it. In the ONNX file each dense block concatenates its maps every few layers
instead of before every layer (:mod:`densenet.deploy.onnx_graph`: ONNX Runtime copies a ``Concat`` on one thread); the
TorchScript and ExportedProgram files keep the block as it is, ``torch.cat`` before every layer.
The ONNX file carries the model's class names, preprocessing and input size in its metadata
(:func:`onnx_metadata`).

The file is written to a temporary name, checked (ONNX with onnxruntime, the others by loading them back) on a
batch of another size than the one traced, and renamed only when the largest difference from the model's own
logits stays within ``tolerance`` relative to the largest logit.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet import __version__
from densenet.deploy.onnx_graph import onnx_graph
from densenet.deploy.runtime import onnx_session, run_onnx
from densenet.fileio import atomic_path
from densenet.meta import Preprocessing
from densenet.model import DenseNet

FORMATS = ("onnx", "torchscript", "exported-program")


class ExportError(ValueError):
    """The export failed or the exported model does not reproduce PyTorch's logits."""


@dataclass(frozen=True)
class ExportReport:
    """Where the export went and how closely it reproduces PyTorch."""

    path: Path
    format: str
    max_abs_diff: float
    max_rel_diff: float
    checked_batch: int


def exportable(model: DenseNet) -> DenseNet:
    """An eval-mode copy in plain autograd operations (``memory_efficient=False``), on the CPU in float32."""
    plain = DenseNet(model.config.replace(memory_efficient=False), meta=model.meta)
    plain.load_state_dict(model.state_dict())  # copies the values
    return plain.float().eval()


def _example(model: DenseNet, batch: int, input_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    spatial = [input_size] * model.config.spatial_dims  # signals (L,), images (H, W), volumes (D, H, W)
    return torch.randn(batch, model.config.in_chans, *spatial, generator=generator)


def _write(model: DenseNet, fmt: str, path: Path, example: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters warn about internals users cannot act on
        if fmt == "onnx":
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False)
            program.model.metadata_props.update(onnx_metadata(model, example.shape[-1]))
            program.save(str(path))
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
        else:
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}}), str(path))


def onnx_metadata(model: DenseNet, input_size: int) -> dict[str, str]:
    """What an ONNX consumer needs besides the graph, as the file's metadata (``metadata_props``, read with
    onnxruntime's ``session.get_modelmeta().custom_metadata_map``): class names, the preprocessing (image mode,
    resize, crop, mean, std; JSON lists; for images), the traced input size (along each of ``spatial_dims`` axes),
    the architecture and the registered name."""
    meta, config = model.meta, model.config
    readable = config.in_chans in (1, 3) and config.spatial_dims == 2  # the standard preprocessing reads images
    preprocessing = meta.preprocessing or (Preprocessing.standard(config) if readable else None)
    entries = {
        "densenet.version": __version__,
        "model_name": meta.name or "",
        "architecture": json.dumps(config.to_dict()),
        "input_size": str(input_size),
        "spatial_dims": str(config.spatial_dims),
        "in_chans": str(config.in_chans),
        "class_names": json.dumps(list(meta.class_names or [str(i) for i in range(config.num_classes)])),
    }
    if preprocessing is not None:
        entries.update({"image_mode": preprocessing.image_mode, "resize": str(preprocessing.resize),
                        "crop": str(preprocessing.crop), "mean": json.dumps(list(preprocessing.mean)),
                        "std": json.dumps(list(preprocessing.std))})
    return entries


def _run_exported(fmt: str, path: Path, x: torch.Tensor, threads: int) -> torch.Tensor:
    if fmt == "onnx":
        return run_onnx(onnx_session(path, threads), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        if fmt == "torchscript":
            return torch.jit.load(str(path)).eval()(x)
        return torch.export.load(str(path)).module()(x)


def export_model(model: DenseNet, fmt: str, output: str | Path, input_size: int | None = None,
                 tolerance: float = 1e-4, threads: int = 2) -> ExportReport:
    """Export ``model`` to ``output`` in ``fmt`` (one of :data:`FORMATS`) and verify it.

    Args:
        model: the model to export (its eval-mode function is exported).
        fmt: ``"onnx"``, ``"torchscript"`` or ``"exported-program"``.
        output: the file to write; its directory must exist.
        input_size: the side of the traced example along each spatial axis (default 224 for the ImageNet stem,
            96 for volumes, 32 for the CIFAR stem); the batch dimension is dynamic, the spatial sizes (length;
            height and width; depth, height and width) are those of the example.
        tolerance: largest allowed difference relative to the largest logit.
        threads: onnxruntime threads for the check.

    Raises:
        ValueError: unknown format. FileNotFoundError: the output directory does not exist.
        ExportError: the exported model does not reproduce PyTorch within ``tolerance``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unsupported export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    output = Path(output)
    plain = exportable(model)
    size = input_size if input_size is not None else plain.config.default_input_size
    if size < 1:
        raise ValueError(f"input size must be at least 1, got {size}")
    plain.check_input(_example(plain, 1, size))
    with torch.no_grad(), atomic_path(output) as temporary:
        _write(onnx_graph(plain) if fmt == "onnx" else plain, fmt, temporary, _example(plain, 2, size))
        check = _example(plain, 3, size)  # another batch size than traced: the batch dimension must be dynamic
        expected = plain(check)  # the model's own function, not the rewritten graph's
        actual = _run_exported(fmt, temporary, check, threads)
        max_abs = (actual - expected).abs().max().item()
        max_rel = max_abs / expected.abs().max().clamp_min(1e-12).item()
        if not max_rel <= tolerance:
            raise ExportError(f"{fmt} export differs from PyTorch by {max_rel:.2e} (relative) > {tolerance:.0e}")
    return ExportReport(output, fmt, max_abs, max_rel, check.shape[0])
