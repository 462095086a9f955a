"""An App whose readiness is switched by a file, and a slow method to kill mid-call."""

from __future__ import annotations

import os
import time
from pathlib import Path

import tether


@tether.service(name="slow")
class Slow:
    def wait(self, seconds: float) -> float:
        """Sleep, then answer."""
        time.sleep(seconds)
        return seconds


class SlowImpl(Slow):
    def wait(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


@tether.service(name="steady")
class Steady:
    def ping(self) -> str:
        """Answers "pong"; depends on no check but those of every service."""
        ...


class SteadyImpl(Steady):
    def ping(self) -> str:
        return "pong"


app = tether.App(SlowImpl(), SteadyImpl(), title="Flaky")


@app.health_check("switch", timeout=0.5, services=["slow"])
def switch() -> bool:
    """Fails while the file named by FLAKY_DOWN exists; only "slow" depends on it."""
    marker = os.environ.get("FLAKY_DOWN")
    return not (marker and Path(marker).exists())


@app.health_check("slow_check", timeout=0.2)
async def slow_check() -> bool:
    """Hangs while FLAKY_HANG names an existing file: counts as failed after 0.2 s."""
    import asyncio

    marker = os.environ.get("FLAKY_HANG")
    if marker and Path(marker).exists():
        await asyncio.sleep(10)
    return True
