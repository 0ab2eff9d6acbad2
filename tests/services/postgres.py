"""PostgreSQL from Debian (``apt-get install postgresql``): one cluster per test session.

initdb/pg_ctl refuse to run as root, so when root they run as the ``postgres`` user with data,
socket and log directories it owns. ``postgres`` yields a :class:`PostgresService` with a DSN
(``postgresql://postgres@127.0.0.1:PORT/postgres``) and ``new_database()`` for isolation. A
watchdog (:mod:`.watchdog`) ends the cluster (SIGQUIT: immediate shutdown) and removes its files
when the test process dies without stopping it (killed by a timeout or kill -9).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .ports import free_port, wait_for_port
from .watchdog import release, start_watchdog


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresService:
    port: int
    root: Path
    host: str = "127.0.0.1"  # the address it listens on (clients connect there)
    watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; returns its DSN."""
        name = f"db_{uuid.uuid4().hex[:10]}"
        subprocess.run(
            [
                "psql",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-q",
                "-c",
                f"CREATE DATABASE {name}",
            ],
            check=True,
            capture_output=True,
        )
        return self.dsn(name)

    @classmethod
    def start(cls, host: str = "127.0.0.1") -> PostgresService:
        """initdb a fresh cluster and start it listening on ``host`` (a free port)."""
        bindir = _bin_dir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does it)"
            )
        root = Path(tempfile.mkdtemp(prefix="ls-pg-"))
        data = root / "data"
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        if host != "127.0.0.1":  # initdb trusts loopback only: let the other hosts in too
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all all trust\n")
        port = free_port()
        options = (
            f"-p {port} -k {root} -c listen_addresses={host} -c fsync=off -c full_page_writes=off"
        )
        service = cls(port=port, root=root, host=host)
        started = subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(root / "log"),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            service.stop()
            raise RuntimeError(f"pg_ctl start failed: {started.stderr or started.stdout}")
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        service.watchdog = start_watchdog(
            postmaster, root, grace=10.0, group=False, first_signal=signal.SIGQUIT
        )
        if host == "127.0.0.1":  # pg_ctl -w waited for readiness; this checks the TCP listener
            wait_for_port(port, what="postgres")
        return service

    def stop(self) -> None:
        bindir = _bin_dir()
        if bindir is not None and (self.root / "data").exists():
            subprocess.run(
                _as_postgres(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(self.root / "data"),
                        "-m",
                        "immediate",
                        "stop",
                    ]
                ),
                capture_output=True,
            )
        if self.watchdog is not None:
            release(self.watchdog)
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresService]:
    if _bin_dir() is None:
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does it)")
    service = PostgresService.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def postgres(postgres_server: PostgresService) -> PostgresService:
    return postgres_server
