"""The ``ahri`` command-line interface (typer + rich). Thin: parse, build settings, call ahri_core."""
