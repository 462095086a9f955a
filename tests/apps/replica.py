"""A service that says which replica answered, for the retry and balancing tests.

``REPLICA_BUSY`` names a file: while it exists, ``whoami`` answers 503
``unavailable`` (with ``Retry-After``). ``crash`` ends the process
mid-call (but in the replica named as survivor), as a replica dying under a
call would. ``REPLICA_ID`` sets the instance id (a restart keeps it).
``linger`` holds a call in flight until the test lets it go, then says
whether the instance was still registered, for the drain-then-deregister
tests.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import tether


@tether.service(name="replica")
class Replica:
    @tether.method(idempotent=True)
    def whoami(self) -> str:
        """This replica's process id (idempotent)."""
        ...

    def record(self, tag: str) -> str:
        """Not idempotent: a call that must not run twice."""
        ...

    @tether.method(idempotent=True)
    def crash_idempotent(self, survivor: str) -> str:
        """Kill this process mid-call unless its pid is ``survivor`` (idempotent)."""
        ...

    def crash(self, survivor: str) -> str:
        """Kill this process mid-call unless its pid is ``survivor`` (not idempotent)."""
        ...

    @tether.method(idempotent=True)
    def sleep(self, seconds: float) -> float:
        """Sleep, then answer (idempotent)."""
        ...

    def linger(self, marker: str) -> bool:
        """Create ``marker + ".started"``, wait (at most 60 s) until ``marker +
        ".release"`` exists, then answer whether this instance is still in the
        registry ``tether serve`` registered it in."""
        ...


class ReplicaImpl(Replica):
    def whoami(self) -> str:
        busy = os.environ.get("REPLICA_BUSY")
        if busy and Path(busy).exists():
            raise tether.Unavailable("busy: try another replica")
        return str(os.getpid())

    def record(self, tag: str) -> str:
        return f"{tag}@{os.getpid()}"

    def crash_idempotent(self, survivor: str) -> str:
        return self.crash(survivor)

    def crash(self, survivor: str) -> str:
        if str(os.getpid()) != survivor:
            os._exit(1)
        return survivor

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def linger(self, marker: str) -> bool:
        from tether.registry import open_registry
        from tether.server.launch import LaunchOptions

        Path(marker + ".started").touch()
        deadline = time.monotonic() + 60
        while not Path(marker + ".release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        url = LaunchOptions.from_env().registry
        assert url is not None

        async def registered() -> bool:
            async with open_registry(url) as registry:
                return any(r.instance_id == app.instance_id for r in await registry.list())

        return asyncio.run(registered())


app = tether.App(ReplicaImpl(), title="Replica", instance_id=os.environ.get("REPLICA_ID"))
