# shellcheck shell=bash
# Shell functions shared by scripts/test.sh, scripts/run-local.sh and
# scripts/check-deploy.sh. Sourced, never run:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Messages: say (progress, stdout), warn and die (stderr, prefixed with the
# script's name; die exits 1). Ports: port_open, wait_port, pid_listens_on,
# port_holder. The machine's brokers: ensure_local_service and, with the
# start commands of docs/ARCHITECTURE.md, ensure_nats, ensure_rabbitmq,
# ensure_postgres, ensure_redis; each starts a stopped one and never
# restarts or reconfigures one that runs.
# Tools: ensure_prometheus (Debian's prometheus and promtool, installed when
# missing, its service not started); ensure_schemathesis (PyPI, pinned, in a
# virtualenv outside the clone; exports SCHEMATHESIS_BIN).

# The name messages are prefixed with: the sourcing script's, without .sh.
SCRIPT_NAME="${SCRIPT_NAME:-$(basename "$0" .sh)}"

say() { printf '==> %s\n' "$*"; }
warn() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

# have COMMAND: true when COMMAND is on PATH or an executable path.
have() { command -v "$1" >/dev/null 2>&1 || [[ -x "$1" ]]; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port NAME HOST PORT SECONDS: waits until the port answers, or dies.
wait_port() {
    local name="$1" host="$2" port="$3" seconds="$4"
    for _ in $(seq "$seconds"); do
        port_open "$host" "$port" && return 0
        sleep 1
    done
    die "$name did not start listening on $host:$port within ${seconds}s"
}

# pid_listens_on PID PORT: true when process PID itself holds a listening TCP
# socket on PORT (IPv4 or IPv6, any address). Reads /proc only: the socket
# inodes listening on the port, then PID's file descriptors.
pid_listens_on() {
    local pid="$1" port="$2" hex local_address state inode fd target
    local inodes=()
    hex="$(printf '%04X' "$port")"
    # Fields of /proc/net/tcp*: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    while read -r _ local_address _ state _ _ _ _ _ inode _; do
        [[ "$state" == 0A && "${local_address##*:}" == "$hex" ]] && inodes+=("$inode")
    done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    ((${#inodes[@]})) || return 1
    for fd in /proc/"$pid"/fd/*; do
        target="$(readlink "$fd" 2>/dev/null)" || continue
        for inode in "${inodes[@]}"; do
            [[ "$target" == "socket:[$inode]" ]] && return 0
        done
    done
    return 1
}

# port_holder PORT: "pid N (command line)" of the process listening on PORT,
# when ss can tell; empty otherwise.
port_holder() {
    local port="$1" pid
    have ss || return 0
    pid="$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)"
    [[ -n "$pid" ]] || return 0
    printf 'pid %s (%s)' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | sed 's/ $//')"
}

# ensure_local_service NAME HOST PORT BINARY INSTALL_HINT START_COMMAND...
# Starts a stopped local service with START_COMMAND and waits up to 90 s for
# its port; a service that answers is left alone.
ensure_local_service() {
    local name="$1" host="$2" port="$3" binary="$4" hint="$5"
    shift 5
    if port_open "$host" "$port"; then
        say "$name answers on $host:$port"
        return 0
    fi
    have "$binary" ||
        die "$name is not running on $host:$port and '$binary' is not installed; install it with: $hint"
    say "$name is not running; starting it: $*"
    "$@" || die "could not start $name with: $*"
    wait_port "$name" "$host" "$port" 90
    say "$name answers on $host:$port"
}

start_postgres() {
    local version
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | head -n1)"
    [[ -n "$version" ]] || die "no PostgreSQL cluster under /etc/postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

ensure_nats() {
    ensure_local_service "NATS (JetStream)" 127.0.0.1 4222 /usr/sbin/nats-server \
        "apt-get install nats-server (2.9+), or download it from https://github.com/nats-io/nats-server/releases" \
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

ensure_rabbitmq() {
    ensure_local_service "RabbitMQ" 127.0.0.1 5672 rabbitmq-server \
        "apt-get install rabbitmq-server (user guest/guest on localhost)" \
        rabbitmq-server -detached
}

ensure_postgres() {
    ensure_local_service "PostgreSQL" 127.0.0.1 5432 pg_ctlcluster \
        "apt-get install postgresql (trust auth for 127.0.0.1, database 'test')" \
        start_postgres
}

# Redis keeps nothing on disk here (task-worker's shared store of finished
# task ids; its tests use keys that expire).
ensure_redis() {
    ensure_local_service "Redis" 127.0.0.1 6379 redis-server \
        "apt-get install redis-server" \
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
}

# ensure_prometheus: Debian's `prometheus` package (Prometheus and promtool)
# for the rule tests (scripts/check-deploy.sh) and the canary gate test
# (crates/e2e/tests/canary_gate), which start their own Prometheus on free
# ports. Installed when missing, as root with apt-get; the packaged service
# is kept from starting (policy-rc.d), and stopped and disabled should a
# service manager have started it anyway. Dies when it cannot be installed.
ensure_prometheus() {
    have prometheus && have promtool && return 0
    if [[ "$(id -u)" == 0 ]] && have apt-get; then
        say "installing prometheus (apt-get; its service is not started)"
        local policy=/usr/sbin/policy-rc.d created=0
        if [[ ! -e "$policy" ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
        fi
        if ! { apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >/dev/null 2>&1; then
            warn "apt-get install prometheus failed"
        fi
        ((created == 0)) || rm -f "$policy"
        if have systemctl && systemctl is-active --quiet prometheus 2>/dev/null; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    fi
    if ! have prometheus || ! have promtool; then
        die "prometheus and promtool are needed: apt-get install prometheus (Debian's package)"
    fi
}

# The schemathesis release crates/user-service/tests/api/openapi.rs is written
# for (its CLI flags changed in 4.0); that test checks the version it runs.
SCHEMATHESIS_VERSION="4.32.5"

# ensure_schemathesis: schemathesis (PyPI) in a virtualenv of its own, made on
# first use (~/.cache/switchyard/schemathesis unless SWITCHYARD_SCHEMATHESIS_DIR
# says otherwise; kept apart from check-deploy.sh's tools, whose jsonschema
# pins could clash), and SCHEMATHESIS_BIN exported for the user-service test
# that runs it against the JSON API. Dies when it cannot be installed.
ensure_schemathesis() {
    local dir="${SWITCHYARD_SCHEMATHESIS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/schemathesis}"
    local pin="schemathesis==$SCHEMATHESIS_VERSION"
    have python3 || die "python3 is needed for $pin (apt-get install python3 python3-venv)"
    if [[ ! -x "$dir/bin/pip" ]]; then
        say "creating the virtualenv $dir"
        python3 -m venv "$dir" || die "cannot create a virtualenv (apt-get install python3-venv)"
    fi
    if [[ "$(cat "$dir/installed" 2>/dev/null)" != "$pin" || ! -x "$dir/bin/st" ]]; then
        say "installing $pin into $dir"
        "$dir/bin/pip" install --quiet --disable-pip-version-check "$pin" ||
            die "could not install $pin from PyPI"
        echo "$pin" >"$dir/installed"
    fi
    export SCHEMATHESIS_BIN="$dir/bin/st"
}
