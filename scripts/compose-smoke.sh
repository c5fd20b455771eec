#!/usr/bin/env bash
# Smoke test of a running `docker compose` deployment of switchyard: what a
# person checks after `docker compose up`, each check one PASS or FAIL line.
#
#   docker compose up -d --build        (or `up --build` in another terminal)
#   scripts/compose-smoke.sh
#
# Checks, in order: every container running and every health check healthy;
# seed-users finished and the owners exist; the JSON API (a user, a 404);
# GetUser and NOT_FOUND over gRPC; monitor-subscriber's /stats; a notification
# within a bound; one trace in Jaeger's API from sensor-publisher through
# alert-subscriber and task-worker to user-service; every Prometheus target
# up; task-worker scaled to 3 (healthy, scraped as 3 targets); the documented
# load command `docker compose run --rm task-producer --count ...`, its tasks
# confirmed, drained from task_queue and shared by the 3 workers. Afterwards
# task-worker is scaled back to the number of replicas it had.
#
# It talks to the deployment through `docker compose` (so COMPOSE_FILE,
# COMPOSE_PROJECT_NAME, COMPOSE_PROFILES and DOCKER_HOST apply as usual; run it
# from the project, it works in the project root) and to the published ports
# through `docker compose port`, so remapped ports work. Needs docker with
# Compose v2, curl and jq; grpcurl when installed (else the gRPC checks run
# user-cli inside the user-service container, over the same gRPC API).
#
# Settings (environment):
#   SMOKE_HOST=127.0.0.1        where the published ports are reached
#   SMOKE_HEALTH_TIMEOUT=240    seconds for every container to be healthy
#   SMOKE_NOTIFY_TIMEOUT=120    seconds for a notification, and for its trace
#   SMOKE_WORKERS=3             task-worker replicas for the scale check
#   SMOKE_LOAD_COUNT=300        tasks the load command publishes
#   SMOKE_KEEP_SCALE=0          1: leave task-worker at SMOKE_WORKERS replicas
#
# Exit status: 0 when every check passed, 1 otherwise (2: missing tools).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

HOST="${SMOKE_HOST:-127.0.0.1}"
HEALTH_TIMEOUT="${SMOKE_HEALTH_TIMEOUT:-240}"
NOTIFY_TIMEOUT="${SMOKE_NOTIFY_TIMEOUT:-120}"
WORKERS="${SMOKE_WORKERS:-3}"
LOAD_COUNT="${SMOKE_LOAD_COUNT:-300}"
KEEP_SCALE="${SMOKE_KEEP_SCALE:-0}"
# The trace of an alert's notification crosses these, in this order.
TRACE_SERVICES=(sensor-publisher alert-subscriber task-worker user-service)
MISSING_USER="u-smoke-missing"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
failures=()
started=$(date +%s)

# ------------------------------------------------------------------ helpers
compose() { docker compose "$@"; }

# check NAME FUNCTION [ARGS...]: one PASS or FAIL line. FUNCTION prints a
# detail on its last line of stdout (shown either way) and returns non-zero
# on failure; anything before the last line is shown only on failure.
check() {
    local name="$1" out detail
    shift
    if "$@" >"$WORK/out" 2>&1; then
        detail="$(tail -n1 "$WORK/out")"
        passed=$((passed + 1))
        printf 'PASS  %s%s\n' "$name" "${detail:+ ($detail)}"
    else
        out="$(cat "$WORK/out")"
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL  %s\n' "$name"
        [[ -n "$out" ]] && printf '%s\n' "$out" | tail -n 15 | sed 's/^/      /'
    fi
}

# poll SECONDS FUNCTION [ARGS...]: runs FUNCTION every 2 s until it succeeds
# or SECONDS passed; its output is that of the last run.
poll() {
    local seconds="$1" deadline
    shift
    deadline=$(($(date +%s) + seconds))
    while true; do
        if "$@" >"$WORK/poll" 2>&1; then
            cat "$WORK/poll"
            return 0
        fi
        if (($(date +%s) >= deadline)); then
            cat "$WORK/poll"
            echo "still failing after ${seconds}s"
            return 1
        fi
        sleep 2
    done
}

# containers: one JSON object per container of the deployment (running or
# not); Compose prints an array or one object per line depending on version.
containers() {
    compose ps -a --format json | jq -c 'if type == "array" then .[] else . end'
}

# replicas SERVICE: the number of running containers of SERVICE.
replicas() {
    containers | jq -s --arg s "$1" '[.[] | select(.Service == $s and .State == "running")] | length'
}

# url SERVICE PORT: http://HOST:PUBLISHED for a port the service publishes.
url() {
    local published
    published="$(compose port "$1" "$2" 2>/dev/null | head -n1)"
    [[ -n "$published" ]] || {
        echo "$1 does not publish port $2 (docker compose port $1 $2)" >&2
        return 1
    }
    echo "http://$HOST:${published##*:}"
}

# http URL: the body on stdout, the status code in $WORK/status; curl's
# error on stderr.
http() {
    : >"$WORK/body"
    curl -sS --max-time 10 -o "$WORK/body" -w '%{http_code}' "$1" >"$WORK/status" || {
        echo "GET $1 failed" >&2
        return 1
    }
    cat "$WORK/body"
}

status() { cat "$WORK/status"; }

# ------------------------------------------------------------------ checks
prerequisites() {
    local missing=()
    for tool in docker curl jq; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || {
        echo "missing: ${missing[*]}"
        return 1
    }
    docker compose version >/dev/null || {
        echo "docker compose (Compose v2) is not available"
        return 1
    }
    compose config --format json >"$WORK/config.json" || {
        echo "docker compose config failed: no deployment to test here"
        return 1
    }
    containers >"$WORK/containers" || return 1
    [[ -s "$WORK/containers" ]] || {
        echo "no containers: start the deployment first (docker compose up -d --build)"
        return 1
    }
    echo "$(docker compose version --short), project $(jq -r .name "$WORK/config.json")"
}

# container_states SERVICE: one line per container of SERVICE (from
# $WORK/containers), "ok NAME STATE HEALTH" or "bad NAME STATE HEALTH". A
# long-running container is ok when running and, if it has a health check,
# healthy; a one-shot job (restart policy `no` or `on-failure`) also when it
# exited with status 0.
container_states() {
    local restart
    restart="$(jq -r --arg s "$1" '.services[$s].restart // "no"' "$WORK/config.json")"
    jq -r --arg s "$1" --arg restart "$restart" '
        select(.Service == $s)
        | (if .State == "running" and ((.Health // "") == "" or .Health == "healthy") then "ok"
           elif .State == "exited" and .ExitCode == 0
                and ($restart == "no" or ($restart | startswith("on-failure"))) then "ok"
           else "bad" end)
          + " \(.Name) \(.State)" + (if (.Health // "") == "" then "" else " \(.Health)" end)
          + (if .State == "exited" then " with status \(.ExitCode)" else "" end)' "$WORK/containers"
}

# every_container_healthy: every service of the active profiles has a
# container, and every container is ok (container_states).
every_container_healthy() {
    local service states
    containers >"$WORK/containers" || return 1
    : >"$WORK/unhealthy"
    for service in $(jq -r '.services | keys[]' "$WORK/config.json"); do
        states="$(container_states "$service")"
        if [[ -z "$states" ]]; then
            echo "$service: no container" >>"$WORK/unhealthy"
        else
            grep '^bad ' <<<"$states" | sed 's/^bad //' >>"$WORK/unhealthy"
        fi
    done
    if [[ -s "$WORK/unhealthy" ]]; then
        cat "$WORK/unhealthy"
        return 1
    fi
    echo "$(jq -r '.services | length' "$WORK/config.json") services, $(wc -l <"$WORK/containers") containers"
}

# service_ok SERVICE: one service's containers, all ok.
service_ok() {
    local states
    containers >"$WORK/containers" || return 1
    states="$(container_states "$1")"
    if [[ -z "$states" ]]; then
        echo "$1: no container"
        return 1
    fi
    if grep -q '^bad ' <<<"$states"; then
        cut -d' ' -f2- <<<"$states"
        return 1
    fi
    grep -o '^ok .*' <<<"$states" | cut -c4- | paste -sd ',' | sed 's/,/, /g'
}

seed_users() {
    local state
    state="$(containers | jq -r 'select(.Service == "seed-users") | "\(.State) \(.ExitCode)"' | head -n1)"
    [[ "$state" == "exited 0" ]] || {
        echo "seed-users: ${state:-no container} (docker compose logs seed-users)"
        return 1
    }
    logs seed-users >"$WORK/seed.log"
    for user in u-1001 u-1002; do
        grep -qE "seed-users: ($user created|created $user|$user exists already)" "$WORK/seed.log" || {
            echo "seed-users logged nothing about $user:"
            tail -n 5 "$WORK/seed.log"
            return 1
        }
    done
    echo "seed-users exited 0: $(grep -oE 'created u-[0-9]+|u-[0-9]+ exists already' "$WORK/seed.log" | sort -u | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
}

json_api() {
    local base body
    base="$(url user-service 8080)" || return 1
    body="$(http "$base/v1/users/u-1001")" || return 1
    if ! { [[ "$(status)" == 200 ]] && jq -e '.user_id == "u-1001" and (.name | length > 0)' <<<"$body" >/dev/null; }; then
        echo "GET $base/v1/users/u-1001: HTTP $(status) $body"
        return 1
    fi
    local name
    name="$(jq -r .name <<<"$body")"
    body="$(http "$base/v1/users/$MISSING_USER")" || return 1
    if ! { [[ "$(status)" == 404 ]] && jq -e '.error.code == "NOT_FOUND"' <<<"$body" >/dev/null; }; then
        echo "GET $base/v1/users/$MISSING_USER: HTTP $(status) $body (want 404 NOT_FOUND)"
        return 1
    fi
    echo "GET /v1/users/u-1001 200 $name, /v1/users/$MISSING_USER 404 NOT_FOUND"
}

grpc_get_user() {
    local published address out
    if command -v grpcurl >/dev/null; then
        published="$(compose port user-service 50051 | head -n1)"
        [[ -n "$published" ]] || {
            echo "user-service does not publish 50051"
            return 1
        }
        address="$HOST:${published##*:}"
        if ! { out="$(grpcurl -plaintext -max-time 10 -d '{"user_id":"u-1001"}' "$address" user.v1.UserService/GetUser 2>&1)" &&
            jq -e '.userId == "u-1001" or .user_id == "u-1001"' <<<"$out" >/dev/null; }; then
            echo "grpcurl GetUser u-1001: $out"
            return 1
        fi
        out="$(grpcurl -plaintext -max-time 10 -d "{\"user_id\":\"$MISSING_USER\"}" "$address" user.v1.UserService/GetUser 2>&1)"
        grep -q 'NotFound' <<<"$out" || {
            echo "grpcurl GetUser $MISSING_USER: $out (want NotFound)"
            return 1
        }
        echo "grpcurl $address (reflection): u-1001 found, $MISSING_USER NotFound"
        return 0
    fi
    # No grpcurl: the published port accepts connections, and user-cli (the
    # image's gRPC client) calls GetUser inside the user-service container.
    published="$(compose port user-service 50051 | head -n1)"
    if ! { [[ -n "$published" ]] && (exec 3<>"/dev/tcp/$HOST/${published##*:}") 2>/dev/null; }; then
        echo "nothing accepts connections on the published gRPC port ${published:-(none)}"
        return 1
    fi
    if ! { out="$(compose exec -T user-service user-cli --url http://127.0.0.1:50051 --json get u-1001 2>&1)" &&
        jq -e '.user_id == "u-1001"' <<<"$out" >/dev/null; }; then
        echo "user-cli get u-1001: $out"
        return 1
    fi
    out="$(compose exec -T user-service user-cli --url http://127.0.0.1:50051 get "$MISSING_USER" 2>&1)"
    local rc=$?
    ((rc == 3)) || {
        echo "user-cli get $MISSING_USER: exit $rc, want 3 (NOT_FOUND): $out"
        return 1
    }
    echo "grpcurl not installed: port $HOST:${published##*:} open; user-cli GetUser u-1001 found, $MISSING_USER NOT_FOUND (exit 3)"
}

stats() {
    local base body
    base="$(url monitor-subscriber 9103)" || return 1
    body="$(http "$base/stats")" || return 1
    if ! { [[ "$(status)" == 200 ]] && jq -e '.totals.sensors > 0 and .totals.readings > 0 and (.sensors | length > 0)' <<<"$body" >/dev/null; }; then
        echo "GET $base/stats: HTTP $(status) $(head -c 300 <<<"$body")"
        return 1
    fi
    jq -r '"\(.totals.sensors) sensors, \(.totals.readings) readings, \(.totals.rate_per_sec * 10 | round / 10) readings/s, \(.totals.seq_gaps) seq gaps"' <<<"$body"
}

# logs SERVICE: its log, without the colour codes of the `pretty` format.
logs() { compose logs --no-color "$1" 2>&1 | sed 's/\x1b\[[0-9;]*m//g'; }

notification_sent() {
    local line
    logs task-worker | grep 'notification sent' >"$WORK/notifications"
    line="$(grep -E 'Alice|Bob' "$WORK/notifications" | tail -n1)"
    [[ -n "$line" ]] || {
        echo "no \"notification sent\" (to Alice or Bob) in docker compose logs task-worker yet"
        return 1
    }
    echo "$(wc -l <"$WORK/notifications") so far, the last to $(grep -oE 'owner_id"?[=:] *"?u-[0-9]+' <<<"$line" | tail -n1 | grep -oE 'u-[0-9]+')"
}

# A trace in Jaeger's query API with a span of every TRACE_SERVICES. A span's
# service is in `processes` (Jaeger) or on the span (simpler stand-ins).
jaeger_trace() {
    local base body want
    base="$(url jaeger 16686)" || return 1
    body="$(http "$base/api/traces?service=user-service&limit=200&lookback=1h")" || return 1
    [[ "$(status)" == 200 ]] || {
        echo "GET $base/api/traces: HTTP $(status)"
        return 1
    }
    want="$(printf '%s\n' "${TRACE_SERVICES[@]}" | jq -R . | jq -sc .)"
    jq -r --argjson want "$want" '
        [.data[]? as $t
         | {id: $t.traceID,
            spans: ($t.spans | length),
            services: ([$t.spans[] | (.service // $t.processes[.processID].serviceName)] | unique)}
         | select(.services as $have | all($want[]; . as $w | $have | index($w)))]
        | first // empty
        | "trace \(.id): \(.spans) spans, services \(.services | join(", "))"' <<<"$body" >"$WORK/trace"
    if [[ -s "$WORK/trace" ]]; then
        cat "$WORK/trace"
    else
        echo "no trace of user-service in $base has spans of all of ${TRACE_SERVICES[*]} yet"
        echo "services Jaeger knows: $(curl -sS --max-time 10 "$base/api/services" | jq -c .data)"
        return 1
    fi
}

# Every active Prometheus target up, and each switchyard job scraping as many
# targets as its service has running containers.
prometheus_targets() {
    local base body job want have
    base="$(url prometheus 9090)" || return 1
    body="$(http "$base/api/v1/targets?state=active")" || return 1
    [[ "$(status)" == 200 ]] || {
        echo "GET $base/api/v1/targets: HTTP $(status)"
        return 1
    }
    jq -r '.data.activeTargets[] | select(.health != "up") | "\(.labels.job) \(.scrapeUrl): \(.health) \(.lastError)"' <<<"$body" >"$WORK/down"
    if [[ -s "$WORK/down" ]]; then
        cat "$WORK/down"
        return 1
    fi
    for job in sensor-publisher alert-subscriber monitor-subscriber user-service task-worker; do
        want="$(replicas "$job")"
        have="$(jq --arg j "$job" '[.data.activeTargets[] | select(.labels.job == $j)] | length' <<<"$body")"
        [[ "$have" == "$want" ]] || {
            echo "job $job: $have targets, $want running containers"
            return 1
        }
    done
    jq -r '"\(.data.activeTargets | length) targets up: " + ([.data.activeTargets[].labels.job] | group_by(.) | map("\(.[0]) \(length)") | join(", "))' <<<"$body"
}

workers_healthy() {
    local want="$1" healthy
    containers >"$WORK/containers" || return 1
    healthy="$(jq -s '[.[] | select(.Service == "task-worker" and .State == "running" and .Health == "healthy")] | length' "$WORK/containers")"
    [[ "$healthy" == "$want" ]] || {
        echo "task-worker: $healthy of $want healthy:"
        container_states task-worker
        return 1
    }
    echo "$healthy task-worker containers healthy"
}

scale_workers() {
    compose up -d --no-recreate --scale "task-worker=$1" task-worker >"$WORK/scale.log" 2>&1 || {
        cat "$WORK/scale.log"
        return 1
    }
    poll "$HEALTH_TIMEOUT" workers_healthy "$1"
}

task_worker_targets() {
    local want="$1" base body
    base="$(url prometheus 9090)" || return 1
    body="$(http "$base/api/v1/targets?state=active")" || return 1
    jq -e --argjson n "$want" '[.data.activeTargets[] | select(.labels.job == "task-worker" and .health == "up")] | length == $n' <<<"$body" >/dev/null || {
        echo "Prometheus: $(jq -r '[.data.activeTargets[] | select(.labels.job == "task-worker") | "\(.labels.instance) \(.health)"] | join(", ")' <<<"$body") (want $want up)"
        return 1
    }
    echo "Prometheus scrapes $want task-worker targets, all up"
}

# processed_by_instance FILE: `instance count` lines of tasks_processed_total
# per task-worker target, as Prometheus last scraped them.
processed_by_instance() {
    local base
    base="$(url prometheus 9090)" || return 1
    curl -sS --max-time 10 --get "$base/api/v1/query" \
        --data-urlencode 'query=sum by (instance) (tasks_processed_total{job="task-worker"})' |
        jq -r '.data.result[] | "\(.metric.instance) \(.value[1])"' | sort >"$1"
}

load_command() {
    local summary
    # The command as deploy/README.md documents it, with a smaller count.
    compose run --rm task-producer --count "$LOAD_COUNT" --rate 200 --kind sleep --payload '{"ms": 20}' \
        >"$WORK/load.log" 2>&1
    local rc=$?
    summary="$(grep -E 'published=[0-9]+ confirmed=' "$WORK/load.log" | tail -n1)"
    if ! { ((rc == 0)) && [[ "$summary" == *"confirmed=$LOAD_COUNT "* && "$summary" == *" failed=0 "* ]]; }; then
        tail -n 10 "$WORK/load.log"
        echo "exit $rc, summary: ${summary:-none}"
        return 1
    fi
    echo "docker compose run --rm task-producer --count $LOAD_COUNT ...: exit 0, $summary"
}

task_queue_drained() {
    local ready
    ready="$(compose exec -T rabbitmq rabbitmqctl -q list_queues name messages 2>/dev/null | awk '$1 == "task_queue" { print $2 }')"
    [[ "$ready" == 0 ]] || {
        echo "task_queue holds ${ready:-?} messages"
        return 1
    }
    echo "task_queue empty"
}

# Every task-worker replica processed some of the load (Prometheus counters
# before and after; a replica without a series before counts from 0).
load_shared() {
    processed_by_instance "$WORK/after" || return 1
    local instances=0 busy=0 instance after before delta
    local detail=()
    while read -r instance after; do
        before="$(awk -v i="$instance" '$1 == i { print $2 }' "$WORK/before")"
        before="${before:-0}"
        instances=$((instances + 1))
        delta=$((${after%.*} - ${before%.*}))
        ((delta > 0)) && busy=$((busy + 1))
        detail+=("$instance +$delta")
    done < <(awk '{ print $1, $2 }' "$WORK/after")
    ((busy >= WORKERS)) || {
        echo "$busy of $WORKERS workers processed tasks: ${detail[*]}"
        return 1
    }
    echo "tasks processed per worker: ${detail[*]}"
}

# ------------------------------------------------------------------ run
echo "compose-smoke: $(pwd), $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
check "prerequisites: docker compose, curl, jq, a running deployment" prerequisites
if ((failed)); then
    echo "compose-smoke: cannot run: ${failures[*]}"
    exit 2
fi

check "every container running, every health check healthy (within ${HEALTH_TIMEOUT}s)" \
    poll "$HEALTH_TIMEOUT" every_container_healthy
for service in $(jq -r '.services | keys[]' "$WORK/config.json"); do
    check "health: $service" service_ok "$service"
done
check "seed users: u-1001 and u-1002" poll 60 seed_users
check "JSON API: GET /v1/users/u-1001, NOT_FOUND as 404" json_api
check "gRPC: user.v1.UserService/GetUser and NOT_FOUND" grpc_get_user
check "monitor-subscriber /stats" poll 30 stats
check "a notification sent within ${NOTIFY_TIMEOUT}s" poll "$NOTIFY_TIMEOUT" notification_sent
check "Jaeger: one trace ${TRACE_SERVICES[*]}" poll "$NOTIFY_TIMEOUT" jaeger_trace
check "Prometheus: every target up" poll 90 prometheus_targets

original_workers="$(replicas task-worker)"
check "scale: docker compose up -d --scale task-worker=$WORKERS, all healthy" scale_workers "$WORKERS"
check "scale: Prometheus scrapes $WORKERS task-worker targets" poll 120 task_worker_targets "$WORKERS"

processed_by_instance "$WORK/before" || : >"$WORK/before"
check "load: docker compose run --rm task-producer --count $LOAD_COUNT" load_command
check "load: task_queue drained by the workers" poll 120 task_queue_drained
# Two scrape intervals, so Prometheus has the workers' final counts.
sleep 12
check "load: shared by all $WORKERS workers (tasks_processed_total per target)" poll 30 load_shared

if [[ "$KEEP_SCALE" != 1 && "$original_workers" != "$WORKERS" && "$original_workers" -gt 0 ]]; then
    check "scale back: task-worker=$original_workers" scale_workers "$original_workers"
fi

echo
echo "compose-smoke: $passed passed, $failed failed ($(($(date +%s) - started))s)"
if ((failed)); then
    printf '  failed: %s\n' "${failures[@]}"
    exit 1
fi
