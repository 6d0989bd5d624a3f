"""Ours in each dtype, and the other runtimes ``densenet bench --dtypes … --peers …`` times next to it on the same
weights, batch and calibration data.

- ours: ``float32`` :func:`~densenet.deploy.optimize.optimize_for_inference`, ``bfloat16`` the same with
  ``dtype=torch.bfloat16`` (float32 in and out), ``int8`` :func:`~densenet.deploy.quantize.quantize` (float32 in
  and out) calibrated on :func:`bench_calibration`'s batches;
- ``openvino``: the same eval-mode network converted by ``openvino.convert_model``, compiled for the CPU with one
  stream and ``threads`` threads, ``INFERENCE_PRECISION_HINT`` f32 / bf16; int8 by NNCF's post-training
  quantization (``nncf.quantize``, its default preset) on the same calibration batches, the rest in f32 as ours;
- ``onnxruntime``: float32 is :func:`~densenet.deploy.bench.runners.build_runners`' ``--onnx`` pair; int8 our
  int8 model's QDQ export (:mod:`densenet.deploy.export_int8`: the same codes and weights); bfloat16 is noted, not
  timed (ONNX Runtime has no bfloat16 convolution on the CPU).

With a ``densenet quantize`` directory as the model, ``ours-int8`` (and its ONNX export) is that directory's int8
model with its own calibration; NNCF still calibrates on :func:`bench_calibration`'s batches (speed only).

A peer or dtype that cannot run here (package missing, CPU without int8 dot products) is left out with a note.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from densenet import capability
from densenet.analysis import Summary
from densenet.deploy.optimize import optimize_for_inference
from densenet.model import DenseNet

DTYPES = ("float32", "bfloat16", "int8")
PEERS = ("openvino", "onnxruntime")
CALIBRATION_BATCHES = 4
OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}
NO_OPENVINO = "openvino is not installed (pip install 'densenet[bench]'): no OpenVINO comparison"
NO_NNCF = "nncf is not installed (pip install 'densenet[bench]'): no OpenVINO int8 comparison"
NO_ONNXRUNTIME_BF16 = "onnxruntime has no bfloat16 convolution on the CPU: no onnxruntime-bfloat16"

Runner = Callable[[], torch.Tensor]


def bench_calibration(x: torch.Tensor, batches: int = CALIBRATION_BATCHES) -> list[torch.Tensor]:
    """Seeded random batches shaped like ``x``: the calibration data ours and NNCF both get (speed does not depend
    on what the ranges are, only on there being ranges)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(x.shape, generator=generator) for _ in range(batches)]


def ours_int8(model: DenseNet, calibration: list[torch.Tensor], quantized: str | Path | None) -> torch.nn.Module:
    """Our int8 model of ``model``: the one saved in the directory ``quantized`` (``densenet quantize``'s, its own
    calibration), else calibrated with min/max on ``calibration``."""
    from densenet.deploy.quantize import load_quantized, quantize

    if quantized is not None:
        return load_quantized(quantized)
    return quantize(model, calibration, observer="minmax", min_images=1)


def ours_runners(model: DenseNet, x: torch.Tensor, dtypes: tuple[str, ...], calibration: list[torch.Tensor],
                 wanted: Callable[[str], bool], quantized: str | Path | None = None
                 ) -> tuple[dict[str, Runner], list[str]]:
    """``ours-bfloat16`` and ``ours-int8`` (``ours``, float32, is built with the torchvision runners); ``quantized``:
    a ``densenet quantize`` directory of ``model`` whose int8 model ``ours-int8`` is (:func:`ours_int8`)."""
    from densenet.deploy.quantize import check_int8_model

    runners: dict[str, Runner] = {}
    notes: list[str] = []
    if "bfloat16" in dtypes and wanted("ours-bfloat16"):
        runners["ours-bfloat16"] = _inference(optimize_for_inference(model, dtype=torch.bfloat16), x)
        if not capability.onednn_bfloat16():
            notes.append(f"ours-bfloat16: {capability.slow_bfloat16_reason()}")
    if "int8" in dtypes and wanted("ours-int8"):
        try:
            check_int8_model(model)
        except (ValueError, OSError) as error:
            notes.append(f"ours-int8 not measured: {error}")
        else:
            runners["ours-int8"] = _inference(ours_int8(model, calibration, quantized), x)
    return runners, notes


def openvino_runners(model: DenseNet, x: torch.Tensor, dtypes: tuple[str, ...], calibration: list[torch.Tensor],
                     threads: int, wanted: Callable[[str], bool]) -> tuple[dict[str, Runner], list[str]]:
    """``openvino-<dtype>`` for each of ``dtypes``."""
    labels = [f"openvino-{dtype}" for dtype in dtypes if wanted(f"openvino-{dtype}")]
    if not labels:
        return {}, []
    if importlib.util.find_spec("openvino") is None:
        return {}, [NO_OPENVINO]
    import openvino

    converted = openvino.convert_model(model.eval(), example_input=x)
    core = openvino.Core()
    runners: dict[str, Runner] = {}
    notes: list[str] = []
    for label in labels:
        dtype = label.removeprefix("openvino-")
        network = converted
        if dtype == "int8":
            if importlib.util.find_spec("nncf") is None:
                notes.append(NO_NNCF)
                continue
            import nncf

            with contextlib.redirect_stdout(sys.stderr):  # its progress bars would mix into `bench --json`
                network = nncf.quantize(converted, nncf.Dataset([batch.numpy() for batch in calibration]),
                                        subset_size=len(calibration))
        compiled = core.compile_model(network, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype]})
        request = compiled.create_infer_request()
        array = x.numpy()
        runners[label] = _openvino_runner(request, array)
    return runners, notes


def onnxruntime_runners(model: DenseNet, x: torch.Tensor, dtypes: tuple[str, ...], calibration: list[torch.Tensor],
                        threads: int, workdir: Path, wanted: Callable[[str], bool],
                        quantized: str | Path | None = None) -> tuple[dict[str, Runner], list[str]]:
    """``onnxruntime-int8``: our int8 model's QDQ export (:mod:`densenet.deploy.export_int8`, written into
    ``workdir`` once; :func:`ours_int8`) under ONNX Runtime; a note for bfloat16 (float32: the ``--onnx`` pair)."""
    notes = [NO_ONNXRUNTIME_BF16] if "bfloat16" in dtypes else []
    if "int8" not in dtypes or not wanted("onnxruntime-int8"):
        return {}, notes
    from densenet.deploy.export_int8 import export_int8_onnx
    from densenet.deploy.quantize import check_int8_model
    from densenet.deploy.runtime import onnx_feed, onnx_session

    try:
        check_int8_model(model)
    except (ValueError, OSError) as error:
        return {}, [*notes, f"onnxruntime-int8 not measured: {error}"]
    path = workdir / "ours-int8.onnx"
    if not path.exists():
        export_int8_onnx(ours_int8(model, calibration, quantized), path, x.shape[-1], threads)
    session = onnx_session(path, threads)
    feed = onnx_feed(session, x)
    return {"onnxruntime-int8": lambda: torch.from_numpy(session.run(None, feed)[0])}, notes


def dtype_of(label: str) -> str:
    """The dtype a configuration computes in, from its label (``ours-int8`` → ``int8``; unmarked: float32)."""
    return next((dtype for dtype in DTYPES if label.endswith(f"-{dtype}")), "float32")


def macs_of(label: str, summary: Summary) -> int:
    """MACs per image a configuration executes: ours in every dtype, and ONNX Runtime on our int8 graph, pool before
    the transitions' 1×1 convs (``macs_executed``; int8 averages the codes first,
    :class:`~densenet.deploy.int8.CodePool`); OpenVINO convolves then pools — the paper's count."""
    pool_first = label == "ours" or label.startswith("ours-") or label == "onnxruntime-int8"
    return summary.macs_executed if pool_first else summary.macs


def _inference(model: torch.nn.Module, x: torch.Tensor) -> Runner:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run


def _openvino_runner(request: object, array: object) -> Runner:
    def run() -> torch.Tensor:
        request.infer({0: array})  # type: ignore[attr-defined]
        return torch.from_numpy(request.get_output_tensor(0).data.copy())  # type: ignore[attr-defined]
    return run
