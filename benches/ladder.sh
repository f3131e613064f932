#!/usr/bin/env bash
# CPU cost of the full ladder, ladderd against the ffmpeg CLI doing the same work in one run.
#
# A 1080p30 source with AAC (pre-encoded, so the publisher costs next to nothing) is published in
# real time to ladderd with the shipped 4-rung ladder (1080p/720p/480p/360p, libx264 veryfast);
# then the ffmpeg CLI decodes the same file once and encodes the same four rungs with the same
# x264 settings. Both report CPU seconds per second of video and peak resident memory.
# Usage: benches/ladder.sh [seconds]   (default 30; needs what scripts/setup.sh installs)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --quiet

work=$(mktemp -d)
daemon=""
cleanup() { [ -n "$daemon" ] && kill "$daemon" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30" \
  -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$secs" \
  -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p -b:v 6000k \
  -c:a aac -b:a 128k -f flv "$work/src.flv"

cat > "$work/bench.yaml" <<YAML
rtmp:  { listen: "127.0.0.1:19350" }
http:  { listen: "127.0.0.1:18080" }
admin: { listen: "127.0.0.1:19090" }
hls:   { segment_duration: 2.0, window: 6 }
transcode: { x264_preset: veryfast }
log: { level: warn }
ladders:
  default:
    - { name: "1080p", width: 1920, height: 1080, video_bitrate: 6000000 }
    - { name: "720p",  width: 1280, height: 720,  video_bitrate: 3000000 }
    - { name: "480p",  width: 854,  height: 480,  video_bitrate: 1200000 }
    - { name: "360p",  width: 640,  height: 360,  video_bitrate: 700000 }
channels:
  - { name: "bench", stream_key: "bench-key", ladder: "default" }
YAML

./target/release/ladderd run --config "$work/bench.yaml" &
daemon=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/19350) 2>/dev/null && break; sleep 0.1; done

tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=$(cpu "$daemon")
ffmpeg -hide_banner -loglevel error -nostdin -re -i "$work/src.flv" -c copy -f flv rtmp://127.0.0.1:19350/live/bench-key
sleep 2 # the last segments flush
after=$(cpu "$daemon")
rss=$(awk '/VmHWM/ {print $2}' "/proc/$daemon/status")
drops=$(curl -s http://127.0.0.1:19090/metrics | awk '/^ladderd_frames_dropped_total/ {s += $2} END {print s + 0}')
encoded=$(curl -s http://127.0.0.1:19090/metrics | awk '/^ladderd_frames_encoded_total/ {s += $2} END {print s + 0}')
kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""

ladderd_cpu=$(awk -v a="$after" -v b="$before" -v t="$tck" -v s="$secs" 'BEGIN {print (a - b) / t / s}')

cli=$( { /usr/bin/time -f "%U %S %M" ffmpeg -hide_banner -loglevel error -nostdin -i "$work/src.flv" \
  -filter_complex "[0:v]split=4[a][b][c][d];[b]scale=1280:720[b2];[c]scale=854:480[c2];[d]scale=640:360[d2]" \
  -map "[a]" -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -b:v 6000k -maxrate 6000k -bufsize 6000k -x264-params keyint=infinite:scenecut=0 -f null - \
  -map "[b2]" -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -b:v 3000k -maxrate 3000k -bufsize 3000k -x264-params keyint=infinite:scenecut=0 -f null - \
  -map "[c2]" -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -b:v 1200k -maxrate 1200k -bufsize 1200k -x264-params keyint=infinite:scenecut=0 -f null - \
  -map "[d2]" -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -b:v 700k -maxrate 700k -bufsize 700k -x264-params keyint=infinite:scenecut=0 -f null - ; } 2>&1 )
read -r u s m <<<"$cli"
cli_cpu=$(awk -v u="$u" -v k="$s" -v s="$secs" 'BEGIN {print (u + k) / s}')

printf 'ladder 1080p30 -> 1080p/720p/480p/360p, libx264 veryfast, %s s, %s cores\n' "$secs" "$(nproc)"
printf '  ladderd     %.2f CPU-s per s of video, peak RSS %d MiB, %d frames encoded, %d skipped\n' \
  "$ladderd_cpu" "$((rss / 1024))" "$encoded" "$drops"
printf '  ffmpeg CLI  %.2f CPU-s per s of video, peak RSS %d MiB\n' "$cli_cpu" "$((m / 1024))"
