#!/usr/bin/env bash
# The whole switchyard system as plain processes on this machine, without
# Docker, against the local NATS, RabbitMQ, PostgreSQL and Redis.
#
#   scripts/run-local.sh up           build (release), start every service, seed the owners
#   scripts/run-local.sh status       brokers and services: running? ready?
#   scripts/run-local.sh logs NAME    follow one service's log (e.g. monitor-subscriber)
#   scripts/run-local.sh load [ARGS]  run task-producer once (default: 500 sleep tasks)
#   scripts/run-local.sh down         stop the services (the brokers keep running)
#
# Brokers that are installed but stopped are started with the commands of
# docs/ARCHITECTURE.md; `down` never stops them. Redis (127.0.0.1:6379) is task-worker's
# optional shared store of finished task ids: used while it answers, never
# started here. Logs and pid files live in .run-local/.
# Ports (all on 127.0.0.1): user-service gRPC 50051 and HTTP 8080; ops
# (/healthz, /readyz, /metrics) 9101 sensor-publisher, 9102 alert-subscriber,
# 9103 monitor-subscriber (+ /stats), 9104 user-service, 9105 task-producer
# (while a load runs), 9106 task-worker. The alert rules are deploy/config/alert-rules/alert-subscriber.toml:
# edit and save it, the running alert-subscriber picks the change up.
#
# Environment: OTEL_EXPORTER_OTLP_ENDPOINT (export traces, e.g. to a local
# Jaeger), RUST_LOG, LOG_FORMAT (default pretty), CARGO_TARGET_DIR,
# RUN_LOCAL_DATABASE (default switchyard_local, created when missing),
# RUN_LOCAL_PROFILE=debug to build and run debug binaries (faster to build),
# and RUN_LOCAL_BUILD=0 to start the binaries already built without building.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

RUN_DIR="$ROOT/.run-local"
# release (default) or debug: which build to run.
PROFILE="${RUN_LOCAL_PROFILE:-release}"
case "$PROFILE" in
    release | debug) ;;
    *) echo "run-local: RUN_LOCAL_PROFILE is release or debug, not $PROFILE" >&2; exit 2 ;;
esac
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
DATABASE="${RUN_LOCAL_DATABASE:-switchyard_local}"

# Start order: user-service first (the workers and the owner seeding need it), the
# consumers before the producer so the first readings are seen.
# task-producer is a one-shot job, not a service: `scripts/run-local.sh load
# [FLAGS]` runs it against the running system.
SERVICES=(user-service task-worker alert-subscriber monitor-subscriber sensor-publisher)

ops_port() {
    case "$1" in
        sensor-publisher) echo 9101 ;;
        alert-subscriber) echo 9102 ;;
        monitor-subscriber) echo 9103 ;;
        user-service) echo 9104 ;;
        task-producer) echo 9105 ;;
        task-worker) echo 9106 ;;
        *) return 1 ;;
    esac
}

# service_ports NAME: every port NAME listens on (127.0.0.1), ops port first.
service_ports() {
    ops_port "$1"
    if [[ "$1" == user-service ]]; then
        echo 50051
        echo 8080
    fi
}

# http_ok PORT PATH: true when GET http://127.0.0.1:PORT/PATH answers 200.
http_ok() {
    local status
    {
        exec 3<>"/dev/tcp/127.0.0.1/$1" &&
            printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3 &&
            IFS=' ' read -r -t 5 _ status _ <&3
    } 2>/dev/null || return 1
    exec 3<&-
    [[ "$status" == "200" ]]
}

pid_of() {
    local file="$RUN_DIR/$1.pid"
    [[ -f "$file" ]] || return 1
    local pid
    pid="$(cat "$file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# ---------------------------------------------------------------- brokers
ensure_brokers() {
    ensure_nats
    ensure_rabbitmq
    ensure_postgres
    # Optional, never started here: without it each worker remembers only its
    # own finished tasks.
    if port_open 127.0.0.1 6379; then
        say "Redis answers on 127.0.0.1:6379"
    else
        say "Redis does not answer on 127.0.0.1:6379; task-worker runs on its own memory of finished tasks until it does"
    fi
}

# The services' own database, so a local run never mixes with the tests'
# database `test`.
ensure_database() {
    command -v psql >/dev/null || die "psql is needed to create the database $DATABASE"
    if psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | grep -q 1; then
        say "database $DATABASE exists"
    else
        say "creating database $DATABASE"
        psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$DATABASE\""
    fi
}

# ---------------------------------------------------------------- services
service_env() {
    local name="$1"
    echo "NATS_URL=nats://127.0.0.1:4222"
    echo "AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DATABASE"
    echo "USER_SERVICE_URL=http://127.0.0.1:50051"
    echo "OPS_ADDR=127.0.0.1:$(ops_port "$name")"
    echo "LOG_FORMAT=${LOG_FORMAT:-pretty}"
    echo "RUST_LOG=${RUST_LOG:-info}"
    case "$name" in
        user-service)
            echo "GRPC_ADDR=127.0.0.1:50051"
            echo "HTTP_ADDR=127.0.0.1:8080"
            ;;
        alert-subscriber)
            echo "CONFIG_FILE=$ROOT/deploy/config/alert-rules/alert-subscriber.toml"
            ;;
        task-worker)
            # Finished task ids shared between workers. Set even while Redis is
            # down: the worker goes on without it and uses it once it answers.
            echo "REDIS_URL=redis://127.0.0.1:6379"
            ;;
    esac
}

# alive PID: true while PID runs (a zombie, exited but not yet reaped, does not).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)"
    [[ "$state" != Z ]]
}

# ensure_ports_free NAME: dies naming the port when something already listens
# on one of NAME's ports (another program, or a copy of NAME started by hand),
# since NAME would fail to bind it.
ensure_ports_free() {
    local name="$1" port holder
    for port in $(service_ports "$name"); do
        if port_open 127.0.0.1 "$port"; then
            holder="$(port_holder "$port")"
            die "cannot start $name: port $port (127.0.0.1:$port) is already taken${holder:+ by $holder}; stop that process or free the port first"
        fi
    done
}

start_service() {
    local name="$1" pid
    if pid="$(pid_of "$name")"; then
        say "$name runs already (pid $pid)"
        return 0
    fi
    [[ -x "$BIN_DIR/$name" ]] || die "$BIN_DIR/$name is missing: did the build succeed?"
    ensure_ports_free "$name"
    local env_args=()
    mapfile -t env_args < <(service_env "$name")
    # setsid: the service outlives this shell and gets its own process group,
    # so `down` can signal exactly it. (This shell is no process group leader,
    # so setsid does not fork: $! is the service's own pid.)
    env "${env_args[@]}" setsid "$BIN_DIR/$name" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
    say "$name started (pid $!, log .run-local/$name.log)"
}

# show_log NAME: the last lines of NAME's log, on stderr.
show_log() {
    echo "--- last lines of .run-local/$1.log:" >&2
    tail -n 20 "$RUN_DIR/$1.log" >&2 || true
}

# wait_ready NAME: waits until the process started for NAME answers 200 on
# /readyz of its ops port, and holds every port of NAME itself. Dies naming
# the service and the port when that process exits, or when another process
# answers on one of its ports.
wait_ready() {
    local name="$1" pid port ops holder ports=()
    pid="$(cat "$RUN_DIR/$name.pid" 2>/dev/null)" || die "$name was not started (no .run-local/$name.pid)"
    mapfile -t ports < <(service_ports "$name")
    ops="${ports[0]}"
    for _ in $(seq 60); do
        if ! alive "$pid"; then
            show_log "$name"
            for port in "${ports[@]}"; do
                if port_open 127.0.0.1 "$port"; then
                    holder="$(port_holder "$port")"
                    die "$name (pid $pid) exited: port $port (127.0.0.1:$port) is taken${holder:+ by $holder}; free it and run up again"
                fi
            done
            die "$name (pid $pid, ops port $ops) exited before it was ready (log above; scripts/run-local.sh down stops the rest)"
        fi
        if http_ok "$ops" /readyz; then
            for port in "${ports[@]}"; do
                if ! pid_listens_on "$pid" "$port"; then
                    holder="$(port_holder "$port")"
                    show_log "$name"
                    die "$name (pid $pid) does not hold its port $port: 127.0.0.1:$port is answered by another process${holder:+, $holder}"
                fi
            done
            say "$name ready (pid $pid, http://127.0.0.1:$ops/readyz)"
            return 0
        fi
        sleep 1
    done
    show_log "$name"
    die "$name (pid $pid, ops port $ops) did not become ready within 60 s (see above; scripts/run-local.sh down stops the rest)"
}

seed_owners() {
    say "seeding the sensor owners u-1001 and u-1002"
    PATH="$BIN_DIR:$PATH" USER_SERVICE_URL=http://127.0.0.1:50051 \
        LOG_FORMAT="${LOG_FORMAT:-pretty}" "$ROOT/deploy/docker/seed-users"
}

stop_service() {
    local name="$1" pid
    if ! pid="$(pid_of "$name")"; then
        rm -f "$RUN_DIR/$name.pid"
        return 0
    fi
    # SIGTERM: the service stops taking work and finishes what is in flight.
    kill -TERM "$pid"
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) still running after 30 s; killing it"
        kill -KILL "$pid"
    fi
    rm -f "$RUN_DIR/$name.pid"
    say "$name stopped"
}

# ---------------------------------------------------------------- commands
cmd_up() {
    mkdir -p "$RUN_DIR"
    ensure_brokers
    ensure_database
    # Before the build: a port another process holds fails now, not minutes later.
    local name
    for name in "${SERVICES[@]}"; do
        pid_of "$name" >/dev/null || ensure_ports_free "$name"
    done
    if [[ "${RUN_LOCAL_BUILD:-1}" == 1 ]]; then
        local build_args=(build --bins)
        [[ "$PROFILE" == release ]] && build_args+=(--release)
        say "cargo ${build_args[*]}"
        cargo "${build_args[@]}"
    fi
    start_service user-service
    wait_ready user-service
    seed_owners
    for name in "${SERVICES[@]:1}"; do
        start_service "$name"
    done
    for name in "${SERVICES[@]:1}"; do
        wait_ready "$name"
    done
    say "up: scripts/run-local.sh logs monitor-subscriber | status | down"
}

cmd_down() {
    local index
    # Reverse order: producers first, so consumers drain what is left.
    for ((index = ${#SERVICES[@]} - 1; index >= 0; index--)); do
        stop_service "${SERVICES[index]}"
    done
    say "down (NATS, RabbitMQ, PostgreSQL and Redis keep running)"
}

cmd_status() {
    local name port pid state holder
    printf '%-20s %s\n' "NATS" "$(port_open 127.0.0.1 4222 && echo "up 127.0.0.1:4222" || echo down)"
    printf '%-20s %s\n' "RabbitMQ" "$(port_open 127.0.0.1 5672 && echo "up 127.0.0.1:5672" || echo down)"
    printf '%-20s %s\n' "PostgreSQL" "$(port_open 127.0.0.1 5432 && echo "up 127.0.0.1:5432" || echo down)"
    printf '%-20s %s\n' "Redis" "$(port_open 127.0.0.1 6379 && echo "up 127.0.0.1:6379" || echo "down (optional)")"
    for name in "${SERVICES[@]}"; do
        port="$(ops_port "$name")"
        if pid="$(pid_of "$name")"; then
            if ! http_ok "$port" /readyz; then
                state="not ready"
            elif pid_listens_on "$pid" "$port"; then
                state="ready"
            else
                holder="$(port_holder "$port")"
                state="NOT ready: port $port is answered by another process${holder:+, $holder}"
            fi
            printf '%-20s running (pid %s), %s, ops http://127.0.0.1:%s\n' "$name" "$pid" "$state" "$port"
        elif port_open 127.0.0.1 "$port"; then
            holder="$(port_holder "$port")"
            printf '%-20s stopped; its port %s is taken by another process%s\n' "$name" "$port" "${holder:+, $holder}"
        else
            printf '%-20s stopped\n' "$name"
        fi
    done
}

# task-producer in the foreground: it prints its summary and exits non-zero
# when a task was not confirmed.
cmd_load() {
    [[ -x "$BIN_DIR/task-producer" ]] || die "$BIN_DIR/task-producer is missing: scripts/run-local.sh up builds it"
    local env_args=()
    mapfile -t env_args < <(service_env task-producer)
    if (($# == 0)); then
        set -- --count 500 --rate 100 --kind sleep --payload '{"ms": 100}'
    fi
    exec env "${env_args[@]}" "$BIN_DIR/task-producer" "$@"
}

cmd_logs() {
    local name="${1:-}"
    [[ " ${SERVICES[*]} " == *" $name "* && -n "$name" ]] || die "logs NAME: NAME is one of ${SERVICES[*]}"
    [[ -f "$RUN_DIR/$name.log" ]] || die "no log yet for $name (scripts/run-local.sh up)"
    exec tail -n 50 -F "$RUN_DIR/$name.log"
}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) cmd_logs "${2:-}" ;;
    load) shift; cmd_load "$@" ;;
    *) usage ;;
esac
