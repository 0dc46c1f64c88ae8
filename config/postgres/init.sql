-- Run once by the postgres container on first start: one database for Airflow's metadata and one
-- for the warehouse, each with its own owner.
CREATE USER airflow WITH PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
CREATE USER hl7ics WITH PASSWORD 'hl7ics';
CREATE DATABASE hl7ics OWNER hl7ics;
