"""A job as plain data: :class:`JobSpec` (what a job file or the ``bootstrap`` flags say)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..windows.assigners import Session, Sliding, Tumbling
from .model import JobModel, validate_job, validate_section


@dataclass
class WindowSpec:
    """``[window]``: the key, the kind with its size/slide/gap, emission, lateness, aggregates."""

    key: list[str]
    kind: str
    size: str | None = None
    slide: str | None = None
    gap: str | None = None
    emit: str = "latest"
    allowed_lateness: str = "0s"
    aggregates: dict[str, str] = field(default_factory=dict)
    bootstrap: str | None = None  # "replay" (default) | "state": Pipeline.run(bootstrap=...)

    def as_dict(self) -> dict[str, Any]:
        """The section as a job file writes it (unset keys left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def assigner(self) -> Sliding | Session:
        """The window assigner (ConfigError naming the key when the section is inconsistent)."""
        window = validate_section("window", self.as_dict())
        if window.kind == "sliding":
            return Sliding(window.size, window.slide)
        if window.kind == "tumbling":
            return Tumbling(window.size)
        return Session(window.gap)


@dataclass
class JobSpec:
    """A parsed job; ``validate()`` types every key, ``build()`` makes the Pipeline and sink.

    The sections are kept as the file (or the flags) wrote them, so ``--print-job`` and ``run``
    round-trip; :meth:`validate` checks them all at once (one line per problem).
    """

    lake: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    where: str | None = None
    select: list[str] | None = None
    window: WindowSpec | None = None
    sink: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, Any] | None = None
    base: Path = field(default_factory=Path.cwd)
    origin: str = "job"
    """Where the job came from, for messages (the job file's path, or ``job``)."""

    @classmethod
    def from_toml(cls, path: str | Path) -> JobSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"job file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"job file {path}: {exc}") from exc
        return cls.from_dict(data, base=path.resolve().parent, origin=f"job file {path}")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base: Path | None = None, *, origin: str = "job"
    ) -> JobSpec:
        """The job ``data`` describes (a parsed job file), validated: ConfigError otherwise."""
        validate_job(data, origin=origin)
        transform = data.get("transform", {})
        window = None
        if "window" in data:
            raw = dict(data["window"])
            key = raw.pop("key")
            raw["key"] = [key] if isinstance(key, str) else list(key)
            raw.setdefault("kind", "sliding")
            window = WindowSpec(**raw)
        return cls(
            lake=data.get("lake"),
            stream=data.get("stream"),
            source=dict(data.get("source", {})),
            where=transform.get("where"),
            select=transform.get("select"),
            window=window,
            sink=dict(data["sink"]),
            checkpoints=data.get("checkpoints"),
            base=base or Path.cwd(),
            origin=origin,
        )

    def as_dict(self) -> dict[str, Any]:
        """The job as the sections of a job file (what :meth:`validate` checks)."""
        data: dict[str, Any] = {}
        if self.lake is not None:
            data["lake"] = self.lake
        if self.stream is not None:
            data["stream"] = self.stream
        if self.source:
            data["source"] = self.source
        transform = {"where": self.where, "select": self.select}
        if any(v is not None for v in transform.values()):
            data["transform"] = {k: v for k, v in transform.items() if v is not None}
        if self.window is not None:
            data["window"] = self.window.as_dict()
        if self.sink:
            data["sink"] = self.sink
        if self.checkpoints is not None:
            data["checkpoints"] = self.checkpoints
        return data

    def validate(self) -> JobModel:
        """Check every section and key (no I/O); the typed job, or one ConfigError listing all
        problems, one line each, naming ``[section] key``."""
        return validate_job(self.as_dict(), origin=self.origin)
