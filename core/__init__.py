"""factflow-lineage: the forensic record of what happened in a data pipeline.

The package is laid out by architecture, one subpackage per side of the event stream:

- ``factflow_lineage.schemas``: the Avro contract of the lineage event stream.
- ``factflow_lineage.producer``: the fire-and-forget recorder adapters call.
- ``factflow_lineage.consumer``: the projector from Kafka into PostgreSQL.
- ``factflow_lineage.query``: the operator surface (read side shared by CLI and API).

This root module holds what all of them share: settings, errors, the CLI root.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from .config import KafkaSettings, PostgresSettings, Settings
from .errors import (
    BrokerUnavailable,
    ConfigError,
    DatabaseUnavailable,
    DecodeError,
    LineageError,
    MigrationError,
    NotFound,
    UnknownSchemaError,
    UsageError,
)

# A library logs, the application decides where to: without this, Python's
# last-resort handler would print our warnings (and librdkafka's) on stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

try:
    __version__ = version("factflow-lineage")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "DatabaseUnavailable",
    "DecodeError",
    "KafkaSettings",
    "LineageError",
    "MigrationError",
    "NotFound",
    "PostgresSettings",
    "Settings",
    "UnknownSchemaError",
    "UsageError",
    "__version__",
]
