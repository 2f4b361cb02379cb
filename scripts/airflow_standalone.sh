#!/bin/sh
# `make airflow`: a one-machine Airflow 3 (`airflow standalone`: scheduler, dag-processor,
# triggerer, api-server; LocalExecutor, which runs every queue, `gpu` included) with instatag's
# DAGs and UI plugin, for trying the DAGs out. The UI is on http://localhost:${AIRFLOW_PORT:-8080};
# the admin password is printed at start and kept in $AIRFLOW_HOME.
#
# Defaults, each overridable from the environment:
#   AIRFLOW_HOME            var/airflow (Airflow's config, SQLite metadata database, logs)
#   INSTATAG_DATA_DIR       var (the same data dir and SQLite database as `make demo`)
#   INSTATAG_DROP_DIRS      var/drop (the ingest DAG's drop folder; put scrapes there)
#   INSTATAG_DATABASE_URL   SQLite under INSTATAG_DATA_DIR, or AIRFLOW_CONN_INSTATAG_DB
# For CeleryExecutor, workers per queue and PostgreSQL, use docker-compose.yml (docs/deployment.md).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${VENV:-.venv}/bin
[ -x "$BIN/airflow" ] || { echo "error: $BIN/airflow missing: run make setup" >&2; exit 1; }
export PATH="$ROOT/$BIN:$PATH"

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/var/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__API__PORT="${AIRFLOW_PORT:-8080}"
# the task runners reach the API server's execution API here
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://localhost:$AIRFLOW__API__PORT}"
export INSTATAG_DATA_DIR="${INSTATAG_DATA_DIR:-$ROOT/var}"
export INSTATAG_DROP_DIRS="${INSTATAG_DROP_DIRS:-$ROOT/var/drop}"
mkdir -p "$AIRFLOW_HOME" "$INSTATAG_DATA_DIR"
for d in $(echo "$INSTATAG_DROP_DIRS" | tr ',' ' '); do mkdir -p "$d"; done

echo "instatag: schema of the instatag database"
instatag db upgrade
echo "instatag: Airflow's metadata database in $AIRFLOW_HOME, pool gpu"
airflow db migrate >/dev/null
airflow pools set gpu 1 "instatag training: one slot per GPU" >/dev/null
echo "instatag: DAGs from $AIRFLOW__CORE__DAGS_FOLDER, drop folder(s) $INSTATAG_DROP_DIRS"
exec airflow standalone
