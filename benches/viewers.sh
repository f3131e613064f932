#!/usr/bin/env bash
# Viewer faults (benches/viewers.rs): 500 LL-HLS viewers alone, then beside 2,000 idle
# connections, slowloris clients and viewers that stop reading; p50/p99 per object for both.
# Usage: benches/viewers.sh [seconds per phase] [viewers] [idle connections]   (20, 500, 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Both ends of every connection live in this one process: 2 × (viewers + idle + a few hundred).
need=$(( 2 * (${2:-500} + ${3:-2000}) + 1024 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
exec cargo bench --locked --bench viewers -- "${1:-20}" "${2:-500}" "${3:-2000}"
