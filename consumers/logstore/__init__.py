"""The log consumer and its query side: the replication-log topic into SQLite, served over HTTP and `georep logs`.

The service itself (`georep.api.service`) is not re-exported: it also
serves the control plane, which reads the store, and importing it here would
make the store's importers import the control plane too.
"""

from consumers.logstore.cli import add_logs_arguments, run_logs
from consumers.logstore.query import LogQuery
from consumers.logstore.store import LogStore

__all__ = ["LogQuery", "LogStore", "add_logs_arguments", "run_logs"]
