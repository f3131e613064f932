#!/usr/bin/env bash
# Smoke test of the NVIDIA path, for an operator on a GPU host (docs/GPU.md):
#   1. builds ladderd (release) and runs `ladderd probe`; stops here unless a GPU opens NVDEC or NVENC;
#   2. starts ladderd on spare local ports with transcode.hardware: $HARDWARE (default nvidia) and a
#      720p -> 720p/480p/360p ladder;
#   3. publishes DURATION (default 30) seconds of a 1280x720 testsrc2 pattern over RTMP;
#   4. checks that every rendition decodes and has the right size (ffprobe/ffmpeg), prints the encode
#      rate of each rung from /metrics and the GPU's utilization from nvidia-smi.
# Exits non-zero at the first failure, saying which step failed and why.
#
# Environment: HARDWARE (nvidia | auto), DURATION, LADDERD (a built binary: skips the build),
# RTMP_PORT, HTTP_PORT, ADMIN_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

HARDWARE=${HARDWARE:-nvidia}
DURATION=${DURATION:-30}
RTMP_PORT=${RTMP_PORT:-19351}
HTTP_PORT=${HTTP_PORT:-18081}
ADMIN_PORT=${ADMIN_PORT:-19091}
CHANNEL=smoke
KEY=smoke-key

fail() {
  echo "gpu-smoke: FAIL: $*" >&2
  exit 1
}
step() { echo; echo "== $*"; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed (it is needed for: $2)"; }

need ffmpeg "publishing the test stream and decoding the renditions"
need ffprobe "checking the renditions"
need curl "reading /metrics"
need python3 "reading the probe's JSON"

work=$(mktemp -d -t ladderd-gpu-smoke.XXXXXX)
daemon=""
publisher=""
cleanup() {
  [ -n "$publisher" ] && kill "$publisher" 2>/dev/null || true
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -n "${LADDERD:-}" ]; then
  bin=$LADDERD
  [ -x "$bin" ] || fail "LADDERD=$bin is not an executable"
else
  step "build (release)"
  need cargo "building ladderd"
  cargo build --release --locked || fail "cargo build --release failed"
  bin=target/release/ladderd
fi

step "probe"
"$bin" probe || fail "ladderd probe exited non-zero"
"$bin" probe --json >"$work/probe.json" || fail "ladderd probe --json exited non-zero"
# A GPU is usable when NVDEC or NVENC (H.264) opened on it; with `nvidia` both must.
python3 - "$work/probe.json" "$HARDWARE" <<'PY' || exit 1
import json, sys
probe = json.load(open(sys.argv[1]))
hardware = sys.argv[2]
def no(why):
    print(f"gpu-smoke: FAIL: no usable NVIDIA GPU: {why}", file=sys.stderr)
    sys.exit(1)
if "Err" in probe["driver"]:
    no(probe["driver"]["Err"])
if not probe["gpus"]:
    no("the NVIDIA driver lists no GPUs")
reasons = []
for g in probe["gpus"]:
    dec, enc = "Ok" in g["nvdec_h264"], "Ok" in g["nvenc_h264"]
    if (dec and enc) or (hardware != "nvidia" and (dec or enc)):
        print(f"gpu-smoke: GPU {g['index']} ({g['name']}): NVDEC h264 {'yes' if dec else 'no'}, NVENC h264 {'yes' if enc else 'no'}")
        sys.exit(0)
    for engine in ("nvdec_h264", "nvenc_h264"):
        if "Err" in g[engine]:
            reasons.append(f"GPU {g['index']} ({g['name']}) {engine}: {g[engine]['Err']}")
no("; ".join(reasons))
PY

step "start ladderd (transcode.hardware: $HARDWARE)"
cat >"$work/ladderd.yaml" <<YAML
rtmp:  { listen: "127.0.0.1:$RTMP_PORT" }
http:  { listen: "127.0.0.1:$HTTP_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
hls:   { segment_duration: 2.0, window: 6 }
transcode:
  hardware: $HARDWARE
ladders:
  smoke:
    - { name: "720p", width: 1280, height: 720, video_bitrate: 3000000 }
    - { name: "480p", width: 854,  height: 480, video_bitrate: 1200000 }
    - { name: "360p", width: 640,  height: 360, video_bitrate: 700000 }
channels:
  - { name: "$CHANNEL", stream_key: "$KEY", ladder: "smoke" }
YAML
"$bin" check-config "$work/ladderd.yaml" || fail "the smoke configuration does not validate"
NO_COLOR=1 "$bin" run --config "$work/ladderd.yaml" >"$work/ladderd.log" 2>&1 &
daemon=$!
for _ in $(seq 1 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$RTMP_PORT") 2>/dev/null; then break; fi
  kill -0 "$daemon" 2>/dev/null || { cat "$work/ladderd.log" >&2; fail "ladderd exited at start"; }
  sleep 0.2
done

step "publish ${DURATION}s of 1280x720 testsrc2"
ffmpeg -hide_banner -loglevel error -nostdin -re \
  -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$DURATION" \
  -c:v libx264 -preset veryfast -tune zerolatency -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p -b:v 2500k \
  -c:a aac -b:a 128k -f flv "rtmp://127.0.0.1:$RTMP_PORT/live/$KEY" &
publisher=$!

metrics() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics"; }
encoded() { # frames encoded so far by one rung
  metrics | awk -v c="$CHANNEL" -v r="$1" '
    /^ladderd_frames_encoded_total\{/ && index($0, "channel=\"" c "\"") && index($0, "rung=\"" r "\"") { print $NF; found=1 }
    END { if (!found) print 0 }'
}

# Let the pipeline start and a few segments exist, then measure the encode rate over a window.
settle=$((DURATION / 3))
sleep "$settle"
if grep -q "transcode.hardware is nvidia but" "$work/ladderd.log"; then
  grep "transcode.hardware is nvidia but" "$work/ladderd.log" | tail -1 >&2
  fail "ladderd refused transcode.hardware: nvidia (above); HARDWARE=auto runs each stage where it can"
fi
declare -A before
for rung in 720p 480p 360p; do before[$rung]=$(encoded "$rung"); done
t0=$(date +%s.%N)

step "GPU utilization"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,utilization.gpu,utilization.encoder,utilization.decoder --format=csv ||
    echo "(nvidia-smi failed; continuing)"
else
  echo "(nvidia-smi is not installed; skipped)"
fi

step "renditions"
for spec in 720p:1280x720 480p:854x480 360p:640x360; do
  rung=${spec%%:*}
  want=${spec#*:}
  url="http://127.0.0.1:$HTTP_PORT/live/$CHANNEL/$rung/index.m3u8"
  # The HLS demuxer lists the stream once per program it belongs to: keep the first line.
  got=$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height -of csv=p=0 "$url") ||
    fail "$rung: ffprobe cannot read $url"
  got=$(printf '%s\n' "$got" | awk 'NF { print; exit }')
  [ "$got" = "h264,${want/x/,}" ] || fail "$rung: expected h264 $want, ffprobe says '$got'"
  errors=$(ffmpeg -hide_banner -nostdin -v error -i "$url" -map 0:v:0 -t 4 -f null - 2>&1) ||
    fail "$rung: decoding failed: $errors"
  [ -z "$errors" ] || fail "$rung: the decoder reported errors: $errors"
  echo "$rung: h264 $want, decodes cleanly"
done

step "encode rate (from /metrics, frames_encoded_total over time)"
sleep "$settle" # a window of at least DURATION/3 seconds, still within the publish
t1=$(date +%s.%N)
for rung in 720p 480p 360p; do
  after=$(encoded "$rung")
  fps=$(python3 -c "print(f'{($after - ${before[$rung]}) / ($t1 - $t0):.1f}')")
  echo "$rung: $fps fps (source: 30 fps)"
  python3 -c "import sys; sys.exit(0 if $after > ${before[$rung]} else 1)" || fail "$rung: no frames encoded while publishing"
done
echo
echo "backends (ladderd_backend_info):"
metrics | grep "^ladderd_backend_info" || echo "  (not exported by this build)"
grep -E "hardware backends refused|transcode backends chosen" "$work/ladderd.log" | tail -2 || true

wait "$publisher" || fail "the publisher (ffmpeg) failed"
publisher=""
kill -0 "$daemon" 2>/dev/null || { tail -20 "$work/ladderd.log" >&2; fail "ladderd exited during the test"; }
echo
echo "gpu-smoke: PASS"
