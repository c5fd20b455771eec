#!/usr/bin/env bash
# Fuzzes every decoder a stranger reaches: the cargo-fuzz
# targets in fuzz/fuzz_targets, one after the other, each for SECONDS
# (default 60), and prints per target the executions and whether it crashed.
#
#   scripts/fuzz.sh                    every target, 60 s each
#   scripts/fuzz.sh 600                every target, 10 minutes each
#   scripts/fuzz.sh 30 traceparent     only the named targets
#
# Needs the nightly toolchain (`rustup toolchain install nightly`; libFuzzer's
# instrumentation is nightly-only); cargo-fuzz is installed when missing.
# Builds go to FUZZ_TARGET_DIR (default fuzz/target), never to the
# workspace's CARGO_TARGET_DIR: sanitizer flags would rebuild everything there.
# Runs under `nice -n 19` (FUZZ_NICE) so a test run beside it keeps the CPU.
#
# Inputs: the committed seed corpus fuzz/corpus/<target> is read, and what
# the fuzzer learns goes to $FUZZ_TARGET_DIR/corpus/<target> (kept between
# runs, not committed). A crash is written to fuzz/artifacts/<target>/;
# reproduce it with `cargo +nightly fuzz run --fuzz-dir fuzz <target> <file>`,
# then make it a regression test in the crate that owns the decoder.
# Exits 1 when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seconds="${1:-60}"
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "usage: scripts/fuzz.sh [seconds] [target...]"
shift || true

target_dir="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
niceness="${FUZZ_NICE:-19}"
unset CARGO_TARGET_DIR

rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || die "the nightly toolchain is missing: rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

fuzz() { nice -n "$niceness" cargo +nightly fuzz "$@"; }

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(fuzz list --fuzz-dir fuzz)
fi

say "building the fuzz targets (the first build takes a while)"
fuzz build --fuzz-dir fuzz --target-dir "$target_dir"

mkdir -p "$target_dir/logs"
results=()
crashed=0
for target in "${targets[@]}"; do
  corpus="$target_dir/corpus/$target"
  log="$target_dir/logs/$target.log"
  mkdir -p "$corpus"
  say "$target: ${seconds}s (log: $log)"
  status=0
  # -timeout: an input that takes over 10 s is a hang, reported like a crash.
  fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$target" "$corpus" "fuzz/corpus/$target" \
    -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  if [[ -z "$executions" ]]; then
    # No final stats (killed early): the last progress line's count.
    executions="$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
  fi
  artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
  if [[ $status -ne 0 || -n "$artifact" ]]; then
    crashed=1
    results+=("$(printf '%-18s %8s %14s  CRASH %s' "$target" "$seconds" "${executions:-?}" "${artifact:-(see log)}")")
  else
    results+=("$(printf '%-18s %8s %14s  ok' "$target" "$seconds" "${executions:-?}")")
  fi
done

printf '\n%-18s %8s %14s  %s\n' target seconds executions result
printf '%s\n' "${results[@]}"
exit "$crashed"
