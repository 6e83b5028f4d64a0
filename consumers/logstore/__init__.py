"""The log consumer and its query side: the replication-log topic into SQLite, served over HTTP and `georep logs`."""

from consumers.logstore.cli import add_logs_arguments, run_logs
from consumers.logstore.query import LogQuery
from consumers.logstore.service import serve_logstore
from consumers.logstore.store import LogStore

__all__ = ["LogQuery", "LogStore", "add_logs_arguments", "run_logs", "serve_logstore"]
