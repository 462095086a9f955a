"""The README's first command: the inventory demo runs end to end and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.fixtures.servers import ROOT


def test_the_inventory_demo_runs_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    result = subprocess.run(
        [sys.executable, "examples/inventory/demo.py"],
        capture_output=True,
        text=True,
        timeout=180,  # about 10 s when idle; generous for a loaded machine
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    for line in (
        "list  -> ['fw1', 'r1', 'r2', 'sw1', 'sw2']",
        "get('ghost') raised NotFound(code='not_found', message=\"no device named 'ghost'\")",
        "error not_found: no device named 'ghost'",  # the CLI's error line, exit 1 expected
        '{"name":"r1","host":"10.0.0.1"',  # curl (or urllib) got the device
        "finished  -> succeeded after 1 attempt(s)",
        "state: succeeded",
        "failed not_found: no such file: no/such/file",
    ):
        assert line in out, line
    assert out.rstrip().endswith("== Stop the server\nstopped")
