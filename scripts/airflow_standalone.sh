#!/bin/sh
# `make airflow`: a one-machine Airflow 3 with instatag's DAGs and UI plugin, for trying the
# DAGs out. It starts what `airflow standalone` starts (scheduler, dag-processor, triggerer,
# api-server; LocalExecutor, which runs every queue, `gpu` included; SQLite metadata database;
# SimpleAuthManager), but itself, so that it can check the ports first, fail loudly when a
# component does not come up or dies, and stop everything it started (`airflow standalone`
# notices neither an api-server that cannot bind nor one that exits, and leaves its children
# running when it is sent SIGTERM).
#
# The DAGs are active from their creation (AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False):
# a drop ingested starts the scoring, a promotion the rescoring, with no manual unpause.
#
# Settings, each from the environment when set:
#   VENV                    .venv (the virtual environment with airflow and instatag)
#   AIRFLOW_HOME            var/airflow (Airflow's config, SQLite metadata database, logs)
#   AIRFLOW_PORT            the UI and REST API (api-server): 8080, or the next free port up to
#                           8099 when 8080 is taken; a port set here must be free
#   AIRFLOW__API__HOST      127.0.0.1 (0.0.0.0 to reach the UI from other machines)
#   AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT   8793 (the scheduler's task log server), or the next free
#   AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT  8794 (the triggerer's log server), or the next free
#   AIRFLOW_START_TIMEOUT   300 (seconds for every component to come up, else it stops with an error)
#   AIRFLOW_STOP_TIMEOUT    30 (seconds running tasks get on stop before everything is killed)
#   INSTATAG_DATA_DIR       var (the same data dir and SQLite database as `make demo`)
#   INSTATAG_DROP_DIRS      var/drop (the ingest DAG's drop folder; put scrapes there)
#   INSTATAG_DATABASE_URL   SQLite under INSTATAG_DATA_DIR, or AIRFLOW_CONN_INSTATAG_DB
#   other INSTATAG_* and AIRFLOW__* settings pass through (e.g. INSTATAG_INGEST_SCHEDULE)
# Each component's output goes to $AIRFLOW_HOME/logs/standalone/<component>.log; task logs are
# in the UI. Ctrl-C (or SIGTERM) stops everything. Exit status: 0 after a requested stop,
# 1 when a component failed to start or died, 2 for a bad setting (a port taken, ...).
# For CeleryExecutor, workers per queue and PostgreSQL, use docker-compose.yml (docs/deployment.md).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
case $VENV in /*) BIN=$VENV/bin ;; *) BIN=$ROOT/$VENV/bin ;; esac
[ -x "$BIN/airflow" ] || { echo "error: $BIN/airflow missing: run make setup" >&2; exit 2; }
PY=$BIN/python
export PATH="$BIN:$PATH"
# this checkout's instatag, whichever checkout the virtual environment was installed from
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "instatag: $*"; }
die() { echo "error: $*" >&2; exit 2; }

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/var/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export INSTATAG_DATA_DIR="${INSTATAG_DATA_DIR:-$ROOT/var}"
export INSTATAG_DROP_DIRS="${INSTATAG_DROP_DIRS:-$ROOT/var/drop}"
START_TIMEOUT=${AIRFLOW_START_TIMEOUT:-300}
STOP_TIMEOUT=${AIRFLOW_STOP_TIMEOUT:-30}
LOGS=$AIRFLOW_HOME/logs/standalone
mkdir -p "$AIRFLOW_HOME" "$LOGS" "$INSTATAG_DATA_DIR"
for d in $(echo "$INSTATAG_DROP_DIRS" | tr ',' ' '); do mkdir -p "$d"; done

# ---------------------------------------------------------------- one instance per AIRFLOW_HOME
LOCK=$AIRFLOW_HOME/standalone.pid
SESSIONS=$AIRFLOW_HOME/standalone.sessions  # "component pid": each is the id of the component's session
if [ -f "$LOCK" ] && ps -o args= -p "$(cat "$LOCK")" 2>/dev/null | grep -q airflow_standalone; then
    die "Airflow already runs from $AIRFLOW_HOME (pid $(cat "$LOCK")): stop it, or set AIRFLOW_HOME to start another"
fi

# ---------------------------------------------------------------- ports
# port_free HOST PORT: the port can be bound there as uvicorn binds it (SO_REUSEADDR: refused
# only while something listens); else prints why not
port_free() {
    "$PY" - "$1" "$2" <<'EOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        sys.exit(exc.strerror or str(exc))
EOF
}
TAKEN=""  # "PORT=what" for each port chosen so far
# pick_port VAR DEFAULT HOST WHAT: the port in $VAR when set (refused when another program
# listens there or another component of this Airflow has it), else DEFAULT or the next port
# above it that is free (20 tried); sets VAR and says when it had to move
pick_port() {
    var=$1 default=$2 host=$3 what=$4
    eval "given=\${$var:-}"
    if [ -n "$given" ]; then
        case $given in *[!0-9]*) die "$var=$given is not a port number" ;; esac
        other=$(taken_by "$given") && die "port $given ($var) is $other's port here: set $var to another port"
        why=$(port_free "$host" "$given" 2>&1) || die "port $given ($var, $what) cannot be used on $host: $why \
(another Airflow?); set $var to a free port"
        port=$given
    else
        port=$default
        while taken_by "$port" >/dev/null || ! why=$(port_free "$host" "$port" 2>&1); do
            case ${why:-in use} in *"in use"*) ;; *) die "cannot listen on $host port $port ($what): $why" ;; esac
            why=""
            port=$((port + 1))
            [ "$port" -lt $((default + 20)) ] || die "ports $default-$((default + 19)) are all in use: \
set $var to a free port for $what"
        done
        [ "$port" = "$default" ] || say "port $default is in use: $what on port $port (set $var to choose)"
    fi
    TAKEN="$TAKEN
$port=$what"
    eval "$var=$port"
}
taken_by() {  # taken_by PORT: prints what has PORT, fails when nothing here has it
    echo "$TAKEN" | sed -n "s/^$1=//p" | grep .
}
# Airflow's log servers first, so that a UI port set to one of theirs is refused by name
pick_port AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT 8793 0.0.0.0 "Airflow's task log server"
pick_port AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT 8794 0.0.0.0 "Airflow's trigger log server"
AIRFLOW_PORT=${AIRFLOW_PORT:-${AIRFLOW__API__PORT:-}}
case $AIRFLOW_PORT in 8793|8794) die "port $AIRFLOW_PORT (AIRFLOW_PORT) is Airflow's default log server port \
(task logs 8793, trigger logs 8794), which every other Airflow on this machine takes: set AIRFLOW_PORT to \
another port, e.g. 8080" ;; esac
pick_port AIRFLOW_PORT 8080 "$AIRFLOW__API__HOST" "the Airflow UI (api-server)"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT
export AIRFLOW__API__PORT=$AIRFLOW_PORT
case $AIRFLOW__API__HOST in
    0.0.0.0|::) URL=http://localhost:$AIRFLOW_PORT CHECK=http://127.0.0.1:$AIRFLOW_PORT ;;
    *:*) URL="http://[$AIRFLOW__API__HOST]:$AIRFLOW_PORT" CHECK=$URL ;;
    *) URL=http://$AIRFLOW__API__HOST:$AIRFLOW_PORT CHECK=$URL ;;
esac
# the task runners reach the api-server's execution API here
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-$URL}"

# ---------------------------------------------------------------- processes
PIDS=""
STOPPING=""
stop() {
    [ -z "$STOPPING" ] || return 0
    STOPPING=1
    [ -n "$PIDS" ] || { rm -f "$LOCK"; return 0; }
    say "stopping Airflow (running tasks get ${STOP_TIMEOUT}s)"
    for entry in $PIDS; do kill -TERM "-${entry#*:}" 2>/dev/null || true; done
    deadline=$(($(date +%s) + STOP_TIMEOUT))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        left=""
        for entry in $PIDS; do ! alive "${entry#*:}" || left="$left ${entry%%:*}"; done
        [ -n "$left" ] || break
        sleep 1
    done
    # each component is a session of its own: this reaches its task processes too
    for entry in $PIDS; do
        pkill -KILL -s "${entry#*:}" 2>/dev/null || kill -KILL "-${entry#*:}" 2>/dev/null || true
    done
    rm -f "$LOCK" "$SESSIONS"
    say "stopped"
}
alive() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]; }
fail() {  # fail MESSAGE COMPONENT: the message, the component's log tail, stop, exit 1
    {
        echo "error: $1"
        echo "---- the end of $LOGS/$2.log:"
        tail -n 40 "$LOGS/$2.log" 2>/dev/null | sed 's/^/    /'
        echo "---- (every component's log: $LOGS)"
    } >&2
    stop
    exit 1
}
check_alive() {
    for entry in $PIDS; do
        name=${entry%%:*} pid=${entry#*:}
        if ! alive "$pid"; then
            rc=0; wait "$pid" || rc=$?
            fail "airflow $name exited (status $rc)" "$name"
        fi
    done
}
start() {  # start NAME ARGS...: `airflow ARGS` in a session of its own, its output in the log
    name=$1; shift
    setsid airflow "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    PIDS="$PIDS $name:$!"
    echo "$name $!" >>"$SESSIONS"
}
trap 'stop; exit 0' INT TERM HUP
trap 'stop' EXIT
echo $$ >"$LOCK"
: >"$SESSIONS"

say "schema of the instatag database"
"$PY" -m instatag.cli db upgrade
say "Airflow's metadata database in $AIRFLOW_HOME, pool gpu"
airflow db migrate >"$LOGS/db-migrate.log" 2>&1 || fail "airflow db migrate failed" db-migrate
airflow pools set gpu 1 "instatag training: one slot per GPU" >"$LOGS/pools.log" 2>&1 || fail "airflow pools set failed" pools
say "DAGs from $AIRFLOW__CORE__DAGS_FOLDER, drop folder(s) $INSTATAG_DROP_DIRS"
say "starting scheduler, dag-processor, triggerer, api-server (logs: $LOGS)"
for name in scheduler dag-processor triggerer api-server; do  # this start's logs; the previous one's in .1
    [ ! -f "$LOGS/$name.log" ] || mv "$LOGS/$name.log" "$LOGS/$name.log.1"
done
start scheduler scheduler
start dag-processor dag-processor
start triggerer triggerer
start api-server api-server --host "$AIRFLOW__API__HOST" --port "$AIRFLOW_PORT"

# ---------------------------------------------------------------- wait until everything is up
# health: prints the components that are not healthy yet (or that the api-server does not answer);
# exit 0 when all are
health() {
    "$PY" - "$CHECK/api/v2/monitor/health" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        health = json.load(r)
except Exception as exc:
    print(f"the api-server does not answer ({exc})")
    sys.exit(1)
bad = [k for k in ("scheduler", "dag_processor", "triggerer", "metadatabase")
       if (health.get(k) or {}).get("status") != "healthy"]
print(" ".join(bad))  # the first one's log is shown when time is up
sys.exit(1 if bad else 0)
EOF
}
deadline=$(($(date +%s) + START_TIMEOUT))
while :; do
    check_alive
    state=$(health) && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        case $state in
            *"does not answer"*) fail "the Airflow UI did not come up on $URL within ${START_TIMEOUT}s ($state)" api-server ;;
            dag_processor*) fail "the dag-processor is not healthy after ${START_TIMEOUT}s (not yet healthy: $state)" dag-processor ;;
            metadatabase*) fail "Airflow's metadata database is not healthy after ${START_TIMEOUT}s" api-server ;;
            *) fail "the ${state%% *} is not healthy after ${START_TIMEOUT}s (not yet healthy: $state)" "${state%% *}" ;;
        esac
    fi
    sleep 2
done

PASSWORDS=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}
PASSWORD=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("admin", ""))' "$PASSWORDS" 2>/dev/null || true)
cat <<EOF

instatag: Airflow is up: $URL
  login     admin, password ${PASSWORD:-(see the file)} (kept in $PASSWORDS)
  DAGs      instatag_ingest, instatag_retrain, instatag_score: active from their creation
  drop      put scrapes into $INSTATAG_DROP_DIRS
  data      $INSTATAG_DATA_DIR (image store, models, reports)
  logs      tasks: in the UI (Dags > a run > a task > Logs); components: $LOGS
  Ctrl-C stops Airflow.

EOF

while :; do
    check_alive
    sleep 2
done
