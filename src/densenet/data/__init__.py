"""Data: data sets (digits, CIFAR, image folders, synthetic), image reading, transforms and augmentation, and the
loader that batches them for one process.

May import: the core (:mod:`densenet.meta` for the preprocessing a model saves), torch, torchvision, PIL,
scikit-learn. Imported by :mod:`densenet.training`, :mod:`densenet.deploy` and :mod:`densenet.cli`; never by the
core.
"""
