-- Run once by the postgres image on an empty data volume (docker-compose.yml mounts it into
-- /docker-entrypoint-initdb.d). POSTGRES_DB creates the Dagster database; MLflow's tracking and registry and the
-- prediction log get their own, owned by the same role (POSTGRES_USER, password from the environment only).
CREATE DATABASE mlflow;
CREATE DATABASE predictions;
