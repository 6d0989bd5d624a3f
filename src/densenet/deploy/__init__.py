"""Deployment: batch norms folded into the convolutions (:mod:`~densenet.deploy.folding`), the optimized
inference model (:mod:`~densenet.deploy.optimize`), prediction and evaluation with saved weights
(:mod:`~densenet.deploy.inference`), verified export to ONNX, TorchScript and ExportedProgram
(:mod:`~densenet.deploy.export`, the ONNX graph in :mod:`~densenet.deploy.onnx_graph`, ONNX Runtime set up once in
:mod:`~densenet.deploy.runtime`), and the side-by-side benchmark behind ``densenet bench``
(:mod:`~densenet.deploy.bench`).

May import: the core, :mod:`densenet.nn`, :mod:`densenet.data`, :mod:`densenet.training` (``task``,
``multilabel``: evaluation). Imported by :mod:`densenet.cli`; ``import densenet`` loads
:mod:`~densenet.deploy.optimize` alone, on first use of ``densenet.optimize_for_inference``, and never onnx.
"""
