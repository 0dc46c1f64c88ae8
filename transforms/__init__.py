"""hl7ics transforms: pure-Python HL7 v2 parsing, transformation and warehouse code.

Nothing in this package imports Airflow, so every function here is unit-tested in milliseconds and
shared by the DAGs (through ``plugins/``) and by the ``hl7ics`` command line.
"""

__version__ = "0.1.0"
