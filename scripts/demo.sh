#!/usr/bin/env bash
# Installs whatever is missing, builds ladderd, starts it with config/ladderd.yaml and publishes a
# synthetic test stream to its demo channel. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh --runtime-only
cargo build --release --locked

./target/release/ladderd run --config config/ladderd.yaml &
daemon=$!
publisher=""
cleanup() {
  [ -n "$publisher" ] && kill "$publisher" 2>/dev/null || true
  kill "$daemon" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Wait for the RTMP listener.
for _ in $(seq 1 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/1935) 2>/dev/null; then break; fi
  sleep 0.2
done

# A 720p30 test pattern with a tone and a clock, looped forever, as OBS would send it.
ffmpeg -hide_banner -loglevel error -nostdin -re \
  -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -vf "drawtext=text='%{localtime\:%T}':fontsize=48:fontcolor=white:box=1:boxcolor=black@0.5:x=20:y=20" \
  -c:v libx264 -preset veryfast -tune zerolatency -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p -b:v 2500k \
  -c:a aac -b:a 128k -f flv rtmp://127.0.0.1:1935/live/demo-key 2>/dev/null &
publisher=$!

host=$(hostname -I 2>/dev/null | awk '{print $1}')
cat <<MSG

ladderd is running with its demo channel. Open this first:
  Preview:  http://${host:-127.0.0.1}:8080/preview/demo
            (a player page: latency, rendition, and timed metadata as overlays)
  Play:     http://${host:-127.0.0.1}:8080/live/demo/master.m3u8
            (Safari, VLC, ffplay, or any hls.js page; the first segments appear after ~4 s)
  Metrics:  http://127.0.0.1:9090/metrics
  Publish your own: rtmp://${host:-127.0.0.1}:1935/live/demo-key
Ctrl-C stops it.
MSG
wait "$daemon"
