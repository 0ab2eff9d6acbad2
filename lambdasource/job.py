"""Declarative jobs (``lambdasource run JOB.toml``): see :mod:`lambdasource.jobfile`.

This module keeps the names other code imports (``JobSpec``, ``WindowSpec``, ``build``,
``parse_schema`` …); the job file format, its typed sections and the builders live in the
:mod:`lambdasource.jobfile` package.
"""

from .jobfile import (
    BuiltJob,
    DeadLetterLog,
    JobModel,
    JobSpec,
    WindowSpec,
    all_dead_lettered,
    all_dead_lettered_message,
    build,
    build_job,
    build_lake,
    build_stream,
    learn_schema,
    parse_aggregate,
    parse_schema,
    parse_type,
    validate_job,
)

__all__ = [
    "BuiltJob",
    "DeadLetterLog",
    "JobModel",
    "JobSpec",
    "WindowSpec",
    "all_dead_lettered",
    "all_dead_lettered_message",
    "build",
    "build_job",
    "build_lake",
    "build_stream",
    "learn_schema",
    "parse_aggregate",
    "parse_schema",
    "parse_type",
    "validate_job",
]
