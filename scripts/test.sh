#!/usr/bin/env bash
# The one test command (README, .ci/run): brings up what the tests need, then
# fmt, clippy, rustdoc and the whole workspace's tests against the real brokers.
#
#   scripts/test.sh            everything
#   CARGO_TARGET_DIR=/cache/x scripts/test.sh   reuse a build cache outside the clone
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port NAME HOST PORT SECONDS
wait_port() {
  local name=$1 host=$2 port=$3 seconds=$4
  for _ in $(seq "$seconds"); do
    port_open "$host" "$port" && return 0
    sleep 1
  done
  die "$name did not start listening on $host:$port within ${seconds}s"
}

# ensure NAME HOST PORT BINARY INSTALL_HINT START_COMMAND...
# Starts a stopped local service with the command DESIGN.md gives; never
# restarts or reconfigures one that is running.
ensure() {
  local name=$1 host=$2 port=$3 binary=$4 hint=$5
  shift 5
  if port_open "$host" "$port"; then
    say "$name answers on $host:$port"
    return 0
  fi
  command -v "$binary" >/dev/null 2>&1 || [ -x "$binary" ] ||
    die "$name is not running on $host:$port and '$binary' is not installed; install it with: $hint"
  say "$name is not running; starting it: $*"
  "$@" || die "could not start $name with: $*"
  wait_port "$name" "$host" "$port" 90
  say "$name answers on $host:$port"
}

ensure "NATS (JetStream)" 127.0.0.1 4222 /usr/sbin/nats-server \
  "apt-get install nats-server (2.9+), or download it from https://github.com/nats-io/nats-server/releases" \
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log

ensure "RabbitMQ" 127.0.0.1 5672 rabbitmq-server \
  "apt-get install rabbitmq-server (user guest/guest on localhost)" \
  rabbitmq-server -detached

# Redis keeps nothing on disk here, as on the machines (task-worker's shared
# idempotency store; its tests use keys that expire).
ensure "Redis" 127.0.0.1 6379 redis-server \
  "apt-get install redis-server" \
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

start_postgres() { pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start; }
ensure "PostgreSQL" 127.0.0.1 5432 pg_ctlcluster \
  "apt-get install postgresql (trust auth for 127.0.0.1, database 'test')" \
  start_postgres

command -v cargo >/dev/null || die "cargo is not installed: see https://rustup.rs"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo doc (broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

say "cargo test"
cargo test --workspace --locked --no-fail-fast

if [ -x scripts/check-deploy.sh ]; then
  say "deploy files"
  scripts/check-deploy.sh
fi

say "all green"
