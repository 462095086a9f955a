"""Command-line options that several ``tether`` commands share."""

from __future__ import annotations

from typing import Annotated

import typer

TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="TETHER_TOKEN",
        show_envvar=True,
        help="An access token to send (prefer the environment variable: a command line "
        "is visible to other users). Default: what 'tether login URL' stored.",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        envvar="TETHER_API_KEY",
        show_envvar=True,
        help="An API key to send, as --token does (or store one with "
        "'tether login URL --api-key-stdin').",
    ),
]
LogLevelOption = Annotated[
    str | None,
    typer.Option(help="debug, info, warning or error. Default: TETHER_LOG_LEVEL, else info."),
]
