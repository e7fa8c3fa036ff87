"""A throwaway PostgreSQL cluster on a free port, made with initdb and driven with pg_ctl, as .ci/run does.

Fault tests stop and restart it; the machine's shared PostgreSQL on 5432 is never touched. As root the server
programs run as the `postgres` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in p.split("/")[4].split(".")])
    for candidate in reversed(found):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayCluster:
    """`start()`, `stop()` and `restart()` one private PostgreSQL; `url` is its asyncpg URL (trust auth)."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("initdb not found (install the postgresql package)")
        self.bin = bin_dir
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="cumapp-faults-pg."))
        self.log = self.data.parent / f"{self.data.name}.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.data, "postgres")
            self.log.touch()
            shutil.chown(self.log, "postgres")
        self._run(f"{self.bin / 'initdb'} -D {self.data} -U postgres --auth=trust -E UTF8", quiet=True)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, command: str, *, quiet: bool = False) -> None:
        argv = ["su", "postgres", "-c", command] if self._as_root else ["sh", "-c", command]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL if quiet else None,
                       stderr=subprocess.DEVNULL if quiet else None, timeout=120)

    def _pg_ctl(self, action: str) -> None:
        options = shlex.quote(f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off")
        self._run(f"{self.bin / 'pg_ctl'} -D {self.data} -l {self.log} -o {options} -w -t 60 -m fast {action}",
                  quiet=True)

    def start(self) -> float:
        """Start and wait until it accepts connections; returns the monotonic time it did."""
        self._pg_ctl("start")
        return time.monotonic()

    def stop(self) -> float:
        """Fast shutdown: sessions are terminated, as when an operator or a failover stops the server."""
        self._pg_ctl("stop")
        return time.monotonic()

    def destroy(self) -> None:
        try:
            self._pg_ctl("stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.data, ignore_errors=True)
        self.log.unlink(missing_ok=True)
