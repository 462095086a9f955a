"""Console output shared by the CLI commands: JSON results and error lines."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from tether.errors import TetherError

out = Console()
err = Console(stderr=True)


def fail(exc: TetherError) -> typer.Exit:
    """Print ``error CODE: message`` (and details) on stderr; return the exit (1) to raise."""
    err.print(f"[bold red]error[/] [red]{exc.code.value}[/]: {exc.message}", highlight=False)
    if exc.details:
        err.print(json.dumps(exc.details, indent=2, default=str), highlight=False)
    return typer.Exit(1)


def emit(value: Any) -> None:
    """Print a JSON value: pretty in a terminal, one compact line when piped."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    if out.is_terminal:
        out.print_json(text)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
