"""Window specifications: ``ls.Tumbling(size)``, ``ls.Sliding(size, slide)``, ``ls.Session(gap)``.

Windows are epoch-aligned and half-open ``[start, end)``; a window with end ``e`` is complete when
the watermark reaches ``e - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..timeutil import Duration, format_duration, parse_duration


@dataclass(frozen=True, slots=True, init=False)
class Sliding:
    """Windows of ``size`` every ``slide`` (``slide <= size``), computed on slices of gcd(size, slide)."""

    size: int
    slide: int

    def __init__(self, size: Duration, slide: Duration) -> None:
        size_us = parse_duration(size, name="Sliding(size)")
        slide_us = parse_duration(slide, name="Sliding(slide)")
        if size_us <= 0 or slide_us <= 0:
            raise ConfigError(f"Sliding: size and slide must be positive, got {size!r}, {slide!r}")
        if slide_us > size_us:
            raise ConfigError(
                f"Sliding: slide {format_duration(slide_us)} is larger than size "
                f"{format_duration(size_us)}; windows would leave gaps (use slide <= size)"
            )
        object.__setattr__(self, "size", size_us)
        object.__setattr__(self, "slide", slide_us)

    @property
    def slice(self) -> int:
        """Width of a slice: gcd(size, slide). Every record touches exactly one slice."""
        return math.gcd(self.size, self.slide)

    def __repr__(self) -> str:
        return f"Sliding({format_duration(self.size)!r}, {format_duration(self.slide)!r})"


@dataclass(frozen=True, slots=True, init=False)
class Tumbling(Sliding):
    """Back-to-back windows of ``size``: sliding with slide = size."""

    def __init__(self, size: Duration) -> None:
        Sliding.__init__(self, size, size)

    def __repr__(self) -> str:
        return f"Tumbling({format_duration(self.size)!r})"


@dataclass(frozen=True, slots=True, init=False)
class Session:
    """Per-key sessions: a record at ``t`` opens ``[t, t + gap)``; overlapping windows merge."""

    gap: int

    def __init__(self, gap: Duration) -> None:
        gap_us = parse_duration(gap, name="Session(gap)")
        if gap_us <= 0:
            raise ConfigError(f"Session: gap must be positive, got {gap!r}")
        object.__setattr__(self, "gap", gap_us)

    def __repr__(self) -> str:
        return f"Session({format_duration(self.gap)!r})"


WindowSpec = Sliding | Session
