#!/usr/bin/env bash
# Installs whatever is missing, then runs the whole test suite: formatting, lints, unit and
# end-to-end tests (real ffmpeg publisher, ffprobe, hls.js in headless Chromium), and a short run
# of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== ladderd check-config config/ladderd.yaml"
cargo run --quiet --locked -- check-config config/ladderd.yaml
echo "== rustfmt --check fuzz/fuzz_targets (its own crate, outside the workspace)"
rustfmt --edition 2024 --check fuzz/fuzz_targets/*.rs
echo "== fuzz: every target for a few seconds from its seeds (scripts/fuzz.sh SECONDS for longer runs)"
scripts/fuzz.sh "${FUZZ_SECONDS:-5}"
echo "== tests"
cargo nextest run --locked --no-fail-fast "$@"
