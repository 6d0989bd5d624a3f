"""Building blocks of the network and the explicit autograd Functions that run in training.

:mod:`~densenet.nn.layers` holds the modules under torchvision's names (``DenseLayer``, ``DenseBlock``,
``Transition``, ``Features``, the stems); :mod:`~densenet.nn.block` the dense block as one Function with a shared
feature buffer and a hand-written backward [F2/F2b], which is what makes training memory-linear;
:mod:`~densenet.nn.recompute` the stem and transition Functions that keep their inputs only; and
:mod:`~densenet.nn.batchnorm` the batch-norm forward and backward those Functions share: what training runs, the
per-channel-affine form of the tutorial's reference ``densenet.tutorial.batch_norm_backward`` [BN], which is only
read and tested against; :mod:`~densenet.nn.rows` the ``(M, C)`` row form of channels-last maps the block computes
on.

May import: torch, :mod:`densenet.tutorial` and :mod:`densenet.extensions` (building the fused kernels). Imported
by :mod:`densenet.model` and the deploy room.
"""
