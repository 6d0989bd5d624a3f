"""The tutorial's reference formulas F1–F7 (plus batch norm, ReLU and max-pool), written to be read.

Each layer type is a ``<op>_forward`` / ``<op>_backward`` pair whose docstrings quote the formula and its id
(docs/MATH.md), and an autograd Function joining them; ``tests/tutorial`` checks every pair against autograd in
float64. Students read this package; the training path (:mod:`densenet.nn`) reuses its dropout pair and is
tested against the rest.

May import: torch only. Imported by :mod:`densenet.nn` and the tests.
"""

from densenet.tutorial.conv import (
    BatchNorm2dFunction,
    Conv2dFunction,
    ReLUFunction,
    batch_norm,
    batch_norm_backward,
    batch_norm_forward,
    conv2d,
    conv2d_backward,
    conv2d_forward,
    relu,
    relu_backward,
    relu_forward,
)
from densenet.tutorial.head import (
    DropoutFunction,
    LinearFunction,
    SoftmaxCrossEntropyFunction,
    dropout,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    linear,
    linear_backward,
    linear_forward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from densenet.tutorial.pool import (
    AvgPool2dFunction,
    GlobalAvgPoolFunction,
    MaxPool2dFunction,
    avg_pool2d,
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool,
    global_avg_pool_backward,
    global_avg_pool_forward,
    max_pool2d,
    max_pool2d_backward,
    max_pool2d_forward,
)

__all__ = [
    "AvgPool2dFunction",
    "BatchNorm2dFunction",
    "Conv2dFunction",
    "DropoutFunction",
    "GlobalAvgPoolFunction",
    "LinearFunction",
    "MaxPool2dFunction",
    "ReLUFunction",
    "SoftmaxCrossEntropyFunction",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "conv2d",
    "conv2d_backward",
    "conv2d_forward",
    "dropout",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "global_avg_pool",
    "global_avg_pool_backward",
    "global_avg_pool_forward",
    "linear",
    "linear_backward",
    "linear_forward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "relu",
    "relu_backward",
    "relu_forward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
]
