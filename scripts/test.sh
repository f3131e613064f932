#!/usr/bin/env bash
# Installs whatever is missing, then runs the whole test suite: formatting, lints, unit and
# end-to-end tests (real ffmpeg publisher, ffprobe, hls.js in headless Chromium).
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
echo "== tests"
cargo nextest run --locked --no-fail-fast "$@"
