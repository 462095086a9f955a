"""The ``tether`` command-line interface (typer and rich)."""
