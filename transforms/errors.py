"""Exceptions shared by the service. Their messages never contain patient data, so they may be
shown in alerts; the retry policy (plugins/hl7ics_airflow/policies.py) keys on their classes.
"""
from __future__ import annotations


class HL7ICSError(Exception):
    """Base class for the service's own errors."""


class BadDataError(HL7ICSError, ValueError):
    """The input itself is wrong; retrying cannot help (fails the task at once)."""


class SourceError(HL7ICSError, OSError):
    """A source or destination could not be read or written; usually transient (retried)."""


class DataQualityError(BadDataError):
    """A batch's share of messages failing data-quality errors passed the threshold: the batch was
    stored and held in quarantine (reason DQ_THRESHOLD) instead of loaded."""
