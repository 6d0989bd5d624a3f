"""Training: the recipe (:mod:`~densenet.training.recipe`) and the engine that runs it — one process or many
(torchrun), CPU or CUDA — in parts with one job each: :mod:`~densenet.training.build` (the run from a recipe: data,
model, loaders, optimiser, schedule), :mod:`~densenet.training.step` (one optimisation step),
:mod:`~densenet.training.loop` (one epoch, evaluation), :mod:`~densenet.training.checkpoint` (the checkpoint schema,
one dataclass for saving and restoring), :mod:`~densenet.training.progress`, :mod:`~densenet.training.signals`,
:mod:`~densenet.training.rundir`, :mod:`~densenet.training.schedule`, tied together by
:mod:`~densenet.training.engine`; plus torchrun set-up, metrics, the run directory's records and plots, and the
allocator setting that keeps a step from faulting in fresh pages.

May import: the core, :mod:`densenet.data`. Imported by :mod:`densenet.deploy` (metrics for evaluation) and
:mod:`densenet.cli`; ``import densenet`` never loads it.
"""
