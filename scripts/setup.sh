#!/usr/bin/env bash
# Installs what building, running and testing ladderd needs on Debian/Ubuntu.
# Idempotent: each step is skipped when what it installs is already present.
# Usage: scripts/setup.sh [--runtime-only]
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_only=0
[ "${1:-}" = "--runtime-only" ] && runtime_only=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

need_apt=()
want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$1"); }

# Build: FFmpeg headers/libraries for ffmpeg-sys-next, clang for its bindgen step.
for p in pkg-config openssl clang libclang-dev libavcodec-dev libavformat-dev libavfilter-dev libavdevice-dev \
         libswscale-dev libswresample-dev libavutil-dev ffmpeg; do want "$p"; done
# The preview player's hls.js comes from the npm registry (web/package-lock.json), so npm is
# needed to run the demo too, not only for tests. Node.js may come from elsewhere than Debian's
# packages; only install it when absent.
command -v node >/dev/null 2>&1 || want nodejs
command -v npm >/dev/null 2>&1 || want npm
if [ "$runtime_only" -eq 0 ]; then
  # Tests: a real browser and a second, independent HLS client; benches: GNU time and curl.
  for p in time curl chromium gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
           gstreamer1.0-plugins-bad gstreamer1.0-libav; do want "$p"; done
  # A software Vulkan device (Mesa's lavapipe): the hardware-frames code of the GPU path (frames
  # contexts, uploads and downloads, the scaling graph on device frames) runs on it where there is
  # no NVIDIA GPU; those tests say "skipped" without it.
  want mesa-vulkan-drivers
  # An independent playlist parser (Python's m3u8) for the playlist tests.
  python3 -m pip --version >/dev/null 2>&1 || want python3-pip
  # A real Prometheus server for tests/prometheus.rs, which runs its own on a free port.
  want prometheus
fi

if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's package enables and starts a system Prometheus on :9090, which is ladderd's default
  # admin port, and the tests never use it: stop it again when this run installed it.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  # Debian's own cargo is too old for this crate (edition 2024); rustup installs a current one.
  echo "setup: installing a Rust toolchain with rustup"
  command -v curl >/dev/null 2>&1 || { $SUDO apt-get install -y -qq curl ca-certificates >/dev/null; }
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# (Re)installs an npm project whenever its lock file is newer than what npm last installed.
npm_ci() {
  if [ ! -f "$1/node_modules/.package-lock.json" ] || [ "$1/package-lock.json" -nt "$1/node_modules/.package-lock.json" ]; then
    echo "setup: installing npm packages in $1"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# hls.js for the /preview/ player page, pinned by web/package-lock.json (http.player_js names it).
npm_ci web

if [ "$runtime_only" -eq 0 ]; then
  if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
  # The fuzz targets (scripts/fuzz.sh) build on the stable toolchain with cargo-fuzz.
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz"
    cargo install --locked cargo-fuzz@0.13.2
  fi
  if ! python3 -c 'import m3u8' >/dev/null 2>&1; then
    echo "setup: installing the Python m3u8 parser"
    # Debian's own Python refuses system-wide pip installs (PEP 668); a user install is enough.
    python3 -m pip install --quiet m3u8==6.0.0 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages m3u8==6.0.0
  fi
  # Browser-side test tools come from the npm registry, pinned by tests/browser/package-lock.json.
  npm_ci tests/browser
fi
