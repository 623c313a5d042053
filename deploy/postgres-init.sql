-- The Dagster database is created by POSTGRES_DB; MLflow and the prediction log get their own.
CREATE DATABASE mlflow;
CREATE DATABASE predictions;
