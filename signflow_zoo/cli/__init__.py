"""The ``signflow-zoo`` command line: one call on the user API (:mod:`signflow_zoo`) per command."""

from signflow_zoo.cli.commands import main

__all__ = ["main"]
