"""``python -m factflow_lineage`` is the ``factflow`` command."""

from .cli import main

main()
