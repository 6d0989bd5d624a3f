"""Training: the recipe (:mod:`~densenet.training.recipe`), the engine that runs it (one process or many, CPU or
CUDA), checkpoints that survive a crash, torchrun set-up, metrics, the run directory's records and plots, and the
allocator setting that keeps a step from faulting in fresh pages.

May import: the core, :mod:`densenet.data`. Imported by :mod:`densenet.deploy` (metrics for evaluation) and
:mod:`densenet.cli`; ``import densenet`` never loads it.
"""
