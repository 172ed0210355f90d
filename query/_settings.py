"""The REST API's own settings, parsed from the environment in one place.

=============================  =====================================================
FACTFLOW_API_TOKEN             bearer token every /api/v1 request must carry (unset:
                               no authentication; the health checks never need it)
FACTFLOW_API_POOL_MAX          most database connections the API holds (10)
FACTFLOW_API_DB_TIMEOUT        seconds a request waits for a connection before 503 (5)
FACTFLOW_API_STATEMENT_TIMEOUT seconds one query may run before it is cancelled (10)
=============================  =====================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from factflow_lineage.config import env_float, env_int
from factflow_lineage.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """How the API authenticates and how much of the database it may hold."""

    token: str | None = field(default=None, repr=False)
    pool_max: int = 10
    db_timeout: float = 5.0
    statement_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ConfigError("FACTFLOW_API_TOKEN is set but blank")
        if not 1 <= self.pool_max <= 1000:
            raise ConfigError(f"FACTFLOW_API_POOL_MAX must be 1..1000, not {self.pool_max}")
        if self.db_timeout <= 0 or self.statement_timeout <= 0:
            raise ConfigError("API timeouts must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Build from ``FACTFLOW_API_*`` variables; unset means default."""
        env = os.environ if environ is None else environ
        token = env.get("FACTFLOW_API_TOKEN")
        return cls(
            token=token if token else None,
            pool_max=env_int(env, "FACTFLOW_API_POOL_MAX", 10),
            db_timeout=env_float(env, "FACTFLOW_API_DB_TIMEOUT", 5.0),
            statement_timeout=env_float(env, "FACTFLOW_API_STATEMENT_TIMEOUT", 10.0),
        )
