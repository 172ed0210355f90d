"""The type of the ``factflow`` fixture (tests/integration/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

#: ``factflow(*args, check=True)``: the real command, run as a subprocess on a
#: test's own topic, schema, storage and spool.
Factflow = Callable[..., subprocess.CompletedProcess[str]]
