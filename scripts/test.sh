#!/usr/bin/env bash
# The one test command (README, .ci/run): brings up what the tests need, then
# fmt, clippy, rustdoc, the whole workspace's tests against the real brokers,
# and the deploy files (scripts/check-deploy.sh).
#
#   scripts/test.sh            everything
#   scripts/test.sh --cluster  only the broker-cluster tests: every #[ignore]d
#                              test with `cluster` in its path (private
#                              3-node clusters, ~1 min each once built;
#                              .ci/run runs them after the rest)
#   CARGO_TARGET_DIR=/cache/x scripts/test.sh   reuse a build cache outside the clone
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if [ "${1:-}" = "--cluster" ]; then
  have cargo || die "cargo is not installed: see https://rustup.rs"
  # The clusters are private; the chaos run's workers share Redis.
  ensure_redis
  say "cargo test (broker clusters)"
  # The chaos checker runs the services' binaries.
  cargo build --workspace --bins --locked
  cargo test --workspace --locked --no-fail-fast -- --ignored cluster
  say "all green"
  exit 0
fi

# NATS, RabbitMQ, Redis and PostgreSQL: started when stopped (the commands
# of docs/ARCHITECTURE.md), never restarted or reconfigured when running.
ensure_nats
ensure_rabbitmq
ensure_redis
ensure_postgres
# schemathesis for the JSON API's contract test (SCHEMATHESIS_BIN).
ensure_schemathesis

have cargo || die "cargo is not installed: see https://rustup.rs"
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
