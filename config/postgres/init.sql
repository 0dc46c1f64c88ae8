-- Run once by the postgres container on first start: one database for Airflow's metadata and one
-- for the warehouse, each with its own owner.
CREATE USER airflow WITH PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
CREATE USER hl7ics WITH PASSWORD 'hl7ics';
-- The warehouse compares and sorts text in byte order, as SQLite does (and its B-trees are
-- cheaper to maintain): transforms/warehouse.py, PG_DATABASE_OPTIONS, which a test compares.
CREATE DATABASE hl7ics OWNER hl7ics TEMPLATE template0 LC_COLLATE 'C';
