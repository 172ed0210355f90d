"""``python -m factflow_lineage.consumer [options]``: the same as ``factflow projector run``."""

from __future__ import annotations

import sys

import typer

from factflow_lineage.errors import ConfigError, LineageError

from ._cli import projector_app


def main(argv: list[str] | None = None) -> None:
    """Run the projector service; our errors become one stderr line and an exit code."""
    command = typer.main.get_command(projector_app)
    try:
        command.main(
            ["run", *(sys.argv[1:] if argv is None else argv)],
            prog_name="python -m factflow_lineage.consumer",
        )
    except LineageError as e:
        print(f"factflow projector: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)


if __name__ == "__main__":
    main()
