"""Shared fixtures. Helper functions the tests import by name live in ``helpers.py`` and ``imagefolder.py``
(on the test path through ``pythonpath`` in pyproject.toml), never here."""
