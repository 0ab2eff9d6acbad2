"""Partition layouts of a Parquet lake: which directory names mean which time range.

Detected layouts (directory components ``key=value``):

- ``dt_hour``  — ``dt=YYYY-MM-DD/hour=HH`` (``date=`` accepted for ``dt=``)
- ``ymdh``     — ``year=YYYY/month=MM/day=DD/hour=HH``
- ``iso_hour`` — ``hour=YYYY-MM-DDTHH`` (``:MM`` suffix tolerated)
- ``daily``    — ``dt=YYYY-MM-DD`` alone: a partition is a day
- ``flat``     — no time directories: every file is its own unit, ordered by its statistics

A user template overrides detection: ``"{year}/{month}/{day}/{hour}"``, ``"dt={date}/hour={hour}"``
(placeholders ``year month day hour date``), matched against the directory part of a path.

Non-data files are classified by :func:`classify`: hidden (``.``-prefixed component), ``_``-prefixed
component (``_SUCCESS``, ``_lambdasource/``, ``_temporary/``), ``.crc`` and other non-Parquet names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ...errors import ConfigError
from ...timeutil import DAY, HOUR, to_micros

DATA_SUFFIXES = (".parquet", ".parq", ".pq")


def classify(path: str) -> str | None:
    """Why ``path`` (relative, ``/``-separated) is not a data file, or None when it is one."""
    parts = path.split("/")
    for part in parts:
        if part.startswith("."):
            return "hidden"
        if part.startswith("_"):
            return "metadata" if part != parts[-1] else "underscore file"
    name = parts[-1]
    if name.endswith(".crc"):
        return "checksum"
    if not name.lower().endswith(DATA_SUFFIXES):
        return "not a .parquet file"
    return None


@dataclass(frozen=True)
class PartitionKey:
    """The time range ``[start, end)`` (µs) a directory stands for; ``label`` is its path."""

    label: str
    start: int
    end: int


_PLACEHOLDERS = {
    "year": r"(?P<year>\d{4})",
    "month": r"(?P<month>\d{1,2})",
    "day": r"(?P<day>\d{1,2})",
    "hour": r"(?P<hour>\d{1,2})",
    "date": r"(?P<date>\d{4}-\d{2}-\d{2})",
}


def _compile_template(template: str) -> re.Pattern[str]:
    pattern = ""
    pos = 0
    for match in re.finditer(r"\{(\w+)\}", template):
        name = match.group(1)
        if name not in _PLACEHOLDERS:
            raise ConfigError(
                f"layout template {template!r}: unknown placeholder {{{name}}} "
                f"(use {', '.join('{' + p + '}' for p in _PLACEHOLDERS)})"
            )
        pattern += re.escape(template[pos : match.start()]) + _PLACEHOLDERS[name]
        pos = match.end()
    pattern += re.escape(template[pos:])
    return re.compile(pattern.strip("/") + "$")


def _utc(year: int, month: int, day: int, hour: int = 0) -> int:
    return to_micros(datetime(year, month, day, hour, tzinfo=UTC))


class Layout:
    """Maps a data file's directory to its :class:`PartitionKey` (None: not in the layout)."""

    def __init__(self, kind: str, template: str | None = None, width: int | None = None) -> None:
        self.kind = kind
        self.template = template
        self._pattern = _compile_template(template) if template else None
        self._width = width

    def __repr__(self) -> str:
        return f"Layout({self.kind!r})"

    @property
    def flat(self) -> bool:
        return self.kind == "flat"

    def key(self, path: str) -> PartitionKey | None:
        directory = path.rsplit("/", 1)[0] if "/" in path else ""
        try:
            key = self._key(directory)
        except ValueError:
            return None
        if key is None or self._width is None or self._width == key.end - key.start:
            return key
        start = key.start - key.start % self._width
        return PartitionKey(_label(start, self._width), start, start + self._width)

    def _key(self, directory: str) -> PartitionKey | None:
        if self.kind == "flat":
            return None
        if self._pattern is not None:
            match = self._pattern.search(directory)
            if match is None:
                return None
            groups = match.groupdict()
            if groups.get("date"):
                year, month, day = (int(x) for x in groups["date"].split("-"))
            else:
                year, month, day = int(groups["year"]), int(groups["month"]), int(groups["day"])
            if groups.get("hour") is not None:
                start = _utc(year, month, day, int(groups["hour"]))
                return PartitionKey(directory, start, start + HOUR)
            start = _utc(year, month, day)
            return PartitionKey(directory, start, start + DAY)
        kv = dict(part.split("=", 1) for part in directory.split("/") if "=" in part)
        if self.kind == "dt_hour":
            date = kv.get("dt", kv.get("date"))
            if date is None or "hour" not in kv:
                return None
            y, m, d = (int(x) for x in date.split("-"))
            start = _utc(y, m, d, int(kv["hour"]))
            return PartitionKey(directory, start, start + HOUR)
        if self.kind == "ymdh":
            if not {"year", "month", "day", "hour"} <= kv.keys():
                return None
            start = _utc(int(kv["year"]), int(kv["month"]), int(kv["day"]), int(kv["hour"]))
            return PartitionKey(directory, start, start + HOUR)
        if self.kind == "iso_hour":
            if "hour" not in kv:
                return None
            value = kv["hour"]
            start = to_micros(datetime.strptime(value[:13], "%Y-%m-%dT%H").replace(tzinfo=UTC))
            return PartitionKey(directory, start, start + HOUR)
        if self.kind == "daily":
            date = kv.get("dt", kv.get("date"))
            if date is None:
                return None
            y, m, d = (int(x) for x in date.split("-"))
            start = _utc(y, m, d)
            return PartitionKey(directory, start, start + DAY)
        raise ConfigError(f"unknown layout {self.kind!r}")


def _label(start: int, width: int) -> str:
    moment = datetime.fromtimestamp(start / 1_000_000, tz=UTC)
    return moment.strftime("dt=%Y-%m-%d" if width == DAY else "dt=%Y-%m-%d/hour=%H")


def detect(paths: list[str], *, template: str | None = None, partitioning: str = "hour") -> Layout:
    """The layout of the data files ``paths`` (or the user's ``template``)."""
    if partitioning not in ("hour", "day"):
        raise ConfigError(f"partitioning must be 'hour' or 'day', got {partitioning!r}")
    width = DAY if partitioning == "day" else None
    if template is not None:
        return Layout("template", template, width)
    for path in paths:
        directory = path.rsplit("/", 1)[0] if "/" in path else ""
        keys = {part.split("=", 1)[0] for part in directory.split("/") if "=" in part}
        if {"year", "month", "day", "hour"} <= keys:
            return Layout("ymdh", width=width)
        if "hour" in keys and keys & {"dt", "date"}:
            return Layout("dt_hour", width=width)
        if "hour" in keys:
            return Layout("iso_hour", width=width)
        if keys & {"dt", "date"}:
            return Layout("daily", width=width)
    return Layout("flat")
