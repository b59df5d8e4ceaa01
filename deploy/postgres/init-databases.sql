-- Runs once on the first start of the postgres container (docker-entrypoint-initdb.d).
-- The airflow database is POSTGRES_DB; the ledger and MLflow get their own databases.
CREATE DATABASE llmops_ledger;
CREATE DATABASE mlflow;
