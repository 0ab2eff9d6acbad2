"""Every extension point of lambdasource in one place, each an ABC with its contract docstring.

=====================  ==========================================================================
``Source``             emits batches/watermarks through ``SourceOutput``; ``snapshot()`` = resume
                       position (immutable); runtime adds time normalisation, dead letters, End.
``Operator``           ``on_batch``/``on_watermark``/``on_timer``/``on_end``; synchronous, never
                       blocks; keyed state and timers through ``Context``.
``Aggregate``          user-defined aggregate: ``init``/``update(batch)``/``merge``/``result``.
``Kernel``             vectorised aggregate over partial states (tuples of numpy arrays).
``WindowEngine``       a window algorithm behind the window operator (dense key ids in, Emission
                       out); emission-mode and lateness rules are stated there.
``Sink``               ``open``/``write``/``on_watermark``/``flush``/``close``; one task per sink.
=====================  ==========================================================================

Splits and checkpoint stores join this list with the lake/stream and checkpoint issues.
"""

from __future__ import annotations

from .operator import Context, Operator, Timer, TimerService
from .sinks.base import Sink
from .sources.base import Source, SourceOutput
from .windows.aggregates import Aggregate, Kernel, Rows, State
from .windows.engine import AddResult, Emission, WindowEngine

__all__ = [
    "AddResult",
    "Aggregate",
    "Context",
    "Emission",
    "Kernel",
    "Operator",
    "Rows",
    "Sink",
    "Source",
    "SourceOutput",
    "State",
    "Timer",
    "TimerService",
    "WindowEngine",
]
