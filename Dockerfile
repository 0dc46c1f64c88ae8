# Production image for every hl7ics service (Airflow components, MLLP listener).
FROM apache/airflow:3.3.2-python3.11
USER root
# A C compiler for the compiled message hot path (scripts/build_native.py).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY requirements.lock /opt/hl7ics/requirements.lock
USER airflow
RUN pip install --no-cache-dir -r /opt/hl7ics/requirements.lock
COPY --chown=airflow:root pyproject.toml README.md /opt/hl7ics/
COPY --chown=airflow:root transforms /opt/hl7ics/transforms
COPY --chown=airflow:root plugins /opt/hl7ics/plugins
COPY --chown=airflow:root dags /opt/hl7ics/dags
COPY --chown=airflow:root sql /opt/hl7ics/sql
COPY --chown=airflow:root config /opt/hl7ics/config
COPY --chown=airflow:root expectations /opt/hl7ics/expectations
COPY --chown=airflow:root scripts /opt/hl7ics/scripts
RUN pip install --no-cache-dir --no-deps -e /opt/hl7ics
# Fails the image build if the compiled modules did not build: production runs them.
RUN python /opt/hl7ics/scripts/build_native.py && python /opt/hl7ics/scripts/build_native.py --check
WORKDIR /opt/hl7ics
