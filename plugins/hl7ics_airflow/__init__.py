"""Airflow-facing glue for hl7ics: task bodies, callbacks, retry policies and connections.

Everything here is a thin adapter from Airflow (context, connections) to the pure functions in
``transforms``. The DAG files in ``dags/`` only declare schedules and wiring.
"""
