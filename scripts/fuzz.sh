#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 30), starting from its
# checked-in seeds (fuzz/seeds/TARGET, made from real ffmpeg output) and keeping what it finds in
# fuzz/corpus/TARGET. A crash stops the run, naming the target and the input that crashed it
# (fuzz/artifacts/TARGET/). Prints each target's executions at the end.
#
# Usage: scripts/fuzz.sh [SECONDS] — TARGETS="chunk_guard avc" picks targets. Builds without a
# sanitizer (`-s none`), which the stable toolchain does; SANITIZER=address runs AddressSanitizer
# builds with the nightly toolchain instead. Installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-30}
sanitizer=${SANITIZER:-none}
toolchain=()
[ "$sanitizer" != none ] && toolchain=(+nightly)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz@0.13.2
fi

targets=${TARGETS:-$(cargo fuzz list)}
# One build of every target (each `run` below then only checks it is current).
cargo "${toolchain[@]}" fuzz build -s "$sanitizer"

summary=()
for target in $targets; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  echo "== fuzz $target (${seconds} s)"
  # Chunk streams and runs of FLV tags are longer than a header, a config or a data message.
  case "$target" in chunk_guard | chunk_guard_vs_rml_rtmp | rtmp_connection | flv_tags) max_len=65536 ;; *) max_len=4096 ;; esac
  if ! cargo "${toolchain[@]}" fuzz run -s "$sanitizer" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED; the crashing input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  summary+=("$(printf '%-16s %14s executions %10s/s' "$target" "${runs:-?}" "${rate:-?}")")
  rm -f "$log"
done
echo
echo "== fuzz summary (${seconds} s per target, sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
