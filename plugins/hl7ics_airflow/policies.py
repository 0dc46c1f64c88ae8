"""Retry policies: bad data fails at once, I/O retries.

A parse or configuration problem will fail the same way on every retry, so retrying only delays the
alert; a file system, network or database hiccup usually passes.
"""
from __future__ import annotations

import os
from datetime import timedelta

import sqlite3

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from transforms.config import ConfigError
from transforms.errors import BadDataError, SourceError

RETRY_DELAY = timedelta(seconds=int(os.environ.get("HL7ICS_RETRY_DELAY_SECONDS", "60")))

# Order matters: the first matching rule wins, and SourceError is both an OSError and ours. No
# rule sets its own retry_delay: a rule's delay overrides the task's, and DAGs that run every
# minute set a shorter one in their default_args.
# Driver errors surface raw where the loader uses the DBAPI cursor directly (COPY, executemany).
# psycopg's are named by path (see _Rule): every DAG file imports this module.
DATA_ERRORS = (ConfigError, BadDataError, ValueError, KeyError, TypeError, DataError, IntegrityError,
               "psycopg.DataError", "psycopg.IntegrityError", sqlite3.IntegrityError, sqlite3.DataError)


class _Rule(RetryRule):
    """A ``RetryRule`` whose dotted exception paths are imported when an exception is first
    matched (on the worker), not when the rule is built: ``RetryRule`` checks them at once, and
    that put psycopg's import (about 50 ms) into every parse of every DAG file."""

    def __post_init__(self) -> None:
        pass


IO_RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        _Rule(exception=SourceError, action=RetryAction.RETRY),
        *(_Rule(exception=e, action=RetryAction.FAIL, reason="bad data or configuration: not retryable")
          for e in DATA_ERRORS),
        _Rule(exception=OSError, action=RetryAction.RETRY),
        _Rule(exception="psycopg.OperationalError", action=RetryAction.RETRY),
        _Rule(exception=sqlite3.OperationalError, action=RetryAction.RETRY),
        _Rule(exception=OperationalError, action=RetryAction.RETRY, reason="database unavailable"),
    ],
)


def default_args() -> dict:
    """Operational defaults every hl7ics DAG uses: an owner, retries under the policy above, and the
    alerting callbacks (hl7ics_airflow/alerts.py): a failure alerts, a retry warns on the same key,
    a success resolves it."""
    from hl7ics_airflow.alerts import on_task_failure, on_task_retry, on_task_success

    return {
        "owner": "data-engineering",
        "retries": 3,
        "retry_delay": RETRY_DELAY,
        "retry_policy": IO_RETRY_POLICY,
        "on_failure_callback": on_task_failure,
        "on_retry_callback": on_task_retry,
        "on_success_callback": on_task_success,
    }
