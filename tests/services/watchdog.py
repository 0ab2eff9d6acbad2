"""A watchdog for a service a fixture started: it ends the service when the test process dies.

The watchdog is a small Python process holding the read end of a pipe whose write end only the
test process has. When the test process ends — normally, or killed with SIGKILL (a CI timeout, a
killed session) — the pipe closes; the watchdog then signals the service (``SIGTERM``; SIGKILL
after ``grace`` seconds), and removes the service's directory. A fixture's own ``stop()`` ends
the service first and then closes the pipe (:func:`release`): the watchdog just removes the
directory. Weak: if the watchdog itself is SIGKILLed, nothing is left to clean up.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

_SCRIPT = """\
import os, shutil, signal, sys, time
sys.stdin.buffer.read()
pid, root, grace, group, first = (
    int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "group", int(sys.argv[5])
)
send = os.killpg if group else os.kill
def alive():
    try:
        send(pid, 0)
        return True
    except ProcessLookupError:
        return False
if alive():
    send(pid, first)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        send(pid, signal.SIGKILL)
shutil.rmtree(root, ignore_errors=True)
"""


def start_watchdog(
    pid: int,
    root: Path,
    *,
    grace: float,
    group: bool,
    first_signal: signal.Signals = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Watch over process ``pid`` (its process group when ``group``) and directory ``root``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SCRIPT,
            str(pid),
            str(root),
            str(grace),
            "group" if group else "process",
            str(int(first_signal)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def release(watchdog: subprocess.Popen[bytes]) -> None:
    """The service is stopped: let the watchdog remove its directory and end."""
    if watchdog.poll() is None:
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        try:
            watchdog.wait(10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()
