#!/usr/bin/env bash
# Runs every benchmark scenario that exists, release build, and collects the
# SPREAD and RESULT lines at the end. Needs the local brokers for the
# messaging scenarios; the scenarios that run the services as processes
# (e2e, scale, memory) use the release binaries built here.
#
#   scripts/bench.sh            all scenarios
#   scripts/bench.sh codec      only some
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --workspace --bins
bench="${CARGO_TARGET_DIR:-target}/release/bench"

available=$("$bench" --help | awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print $1}' | grep -v '^help$')
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || mapfile -t scenarios <<<"$available"

results=()
for scenario in "${scenarios[@]}"; do
  printf '\n==> bench %s\n' "$scenario"
  output=$("$bench" "$scenario" | tee -a /dev/stderr)
  while IFS= read -r line; do results+=("$line"); done < <(grep -E '^(SPREAD|RESULT) ' <<<"$output")
done

printf '\n==> results (%s, %s cores)\n' "$(uname -m)" "$(nproc)"
printf '%s\n' "${results[@]}"
