-- One Postgres for the stack: Airflow's metadata DB and the feature store migration's own databases.
CREATE USER airflow WITH PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE fsmig_registry OWNER airflow;     -- routing state, audit log, shadow results, metrics
CREATE DATABASE legacy_offline OWNER airflow;     -- the legacy offline store's history tables
CREATE DATABASE events OWNER airflow;             -- the raw event log
