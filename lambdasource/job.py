"""Declarative jobs (``lambdasource run JOB.toml``): see :mod:`lambdasource.jobfile`.

This module keeps the names other code imports (``JobSpec``, ``WindowSpec``, ``build``,
``parse_schema`` …); the job file format, its typed sections and the builders live in the
:mod:`lambdasource.jobfile` package, whose ``__all__`` this module re-exports.
"""

from .jobfile import *  # noqa: F403
from .jobfile import __all__ as __all__
