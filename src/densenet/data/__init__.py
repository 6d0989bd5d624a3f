"""Data: data sets (digits, CIFAR, image folders, synthetic; volumes, signals, synthetic shapes), image, volume and
signal reading, transforms and augmentation, and the loader that batches them for one process.

May import: the core (:mod:`densenet.meta` for the preprocessing a model saves), torch, torchvision, PIL,
scikit-learn; MONAI and nibabel (the ``volumes`` extra) on first use, through
:func:`densenet.data.arrayio.require_extra`. Imported by :mod:`densenet.training`, :mod:`densenet.deploy` and
:mod:`densenet.cli`; never by the core.
"""
