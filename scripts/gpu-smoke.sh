#!/usr/bin/env bash
# Smoke test of the NVIDIA paths, for an operator on a GPU host (docs/GPU.md):
#   1. builds ladderd (release) and runs `ladderd probe`; stops here unless a GPU decodes into CUDA
#      frames (NVDEC) and scales them with the CUDA graph;
#   2. for each pass (MODE), starts ladderd on spare local ports with a 720p -> 720p/480p/360p ladder,
#      publishes DURATION (default 30) seconds of a 1280x720 testsrc2 pattern over RTMP, and checks:
#      - the plan (decode, scale, encode backends) from the log, and that the channel's CUDA scaling
#        graph was built;
#      - each encoder's input: NVENC fed GPU frames (zero-copy), libx264 fed downloads (hybrid);
#      - no fallback to the CPU (ladderd_pipeline_errors_total{stage=*_fallback} stays 0);
#      - every rendition decodes and has the right size (ffprobe/ffmpeg);
#      and prints each rung's encode rate and the GPU's NVDEC/NVENC utilization (nvidia-smi dmon)
#      while the stream runs.
#   Passes:
#      zero-copy  transcode.hardware: nvidia — NVDEC -> scale_cuda -> NVENC, frames never leave the GPU
#                 (skipped when no GPU opens NVENC, e.g. H100/H200/A100);
#      hybrid     transcode.hardware: auto with NVENC switched off (LADDERD_NVIDIA_DISABLE=nvenc) —
#                 NVDEC -> scale_cuda -> download -> libx264, the plan of GPUs without NVENC.
#      faults     transcode.hardware: auto with faults injected (LADDERD_FAULTS, docs/GPU.md): NVDEC
#                 made to fail in three publishes in a row quarantines the GPU (the fourth is placed
#                 on the CPU, ladderd_gpu_quarantined is 1, /readyz lists it); then, on a fresh
#                 daemon, NVDEC made to hang is left behind and the channel goes on on the CPU
#                 (decoder_stalled), every rendition still decoding.
# Exits non-zero at the first failure, saying which step failed and why.
#
# Environment: MODE (all | zero-copy | hybrid | faults; default all), DURATION, LADDERD (a built binary:
# skips the build), RTMP_PORT, HTTP_PORT, ADMIN_PORT, GPU_SMOKE_KEEP=1 (keep the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

MODE=${MODE:-all}
DURATION=${DURATION:-30}
RTMP_PORT=${RTMP_PORT:-19351}
HTTP_PORT=${HTTP_PORT:-18081}
ADMIN_PORT=${ADMIN_PORT:-19091}
CHANNEL=smoke
KEY=smoke-key
RUNGS="720p:1280x720 480p:854x480 360p:640x360"

fail() {
  echo "gpu-smoke: FAIL: $*" >&2
  exit 1
}
step() { echo; echo "== $*"; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed (it is needed for: $2)"; }

case "$MODE" in all | zero-copy | hybrid | faults) ;; *) fail "MODE must be all, zero-copy, hybrid or faults, not '$MODE'" ;; esac
need ffmpeg "publishing the test stream and decoding the renditions"
need ffprobe "checking the renditions"
need curl "reading /metrics"
need python3 "reading the probe's JSON and the JSON log"

work=$(mktemp -d -t ladderd-gpu-smoke.XXXXXX)
daemon=""
publisher=""
dmon=""
cleanup() {
  [ -n "$publisher" ] && kill "$publisher" 2>/dev/null || true
  [ -n "$dmon" ] && kill "$dmon" 2>/dev/null || true
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${GPU_SMOKE_KEEP:-0}" = 1 ]; then echo "gpu-smoke: work directory kept: $work"; else rm -rf "$work"; fi
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
# Which passes this machine can run: both need NVDEC into CUDA frames and CUDA scaling on one GPU;
# zero-copy also needs NVENC there. Prints the passes to run, one per line.
python3 - "$work/probe.json" "$MODE" >"$work/passes" <<'PY' || exit 1
import json, sys
probe, mode = json.load(open(sys.argv[1])), sys.argv[2]
def no(why):
    print(f"gpu-smoke: FAIL: no usable NVIDIA GPU: {why}", file=sys.stderr)
    sys.exit(1)
if "Err" in probe["driver"]:
    no(probe["driver"]["Err"])
if not probe["gpus"]:
    no("the NVIDIA driver lists no GPUs")
ok = lambda g, k: "Ok" in g[k]
reasons, gpu = [], None
for g in probe["gpus"]:
    for k in ("nvdec_cuda", "cuda_scale"):
        if not ok(g, k):
            reasons.append(f"GPU {g['index']} ({g['name']}) {k}: {g[k]['Err']}")
    if ok(g, "nvdec_cuda") and ok(g, "cuda_scale") and (gpu is None or (ok(g, "nvenc_h264") and not ok(gpu, "nvenc_h264"))):
        gpu = g
if gpu is None:
    no("; ".join(reasons))
nvenc = ok(gpu, "nvenc_h264")
# The passes are pinned to this GPU (transcode.gpus), so that placement cannot pick another one.
open(sys.argv[1] + ".gpu", "w").write(str(gpu["index"]))
print(f"gpu-smoke: GPU {gpu['index']} ({gpu['name']}): NVDEC to CUDA yes, CUDA scaling yes, NVENC h264 "
      + ("yes" if nvenc else "no: " + gpu["nvenc_h264"]["Err"]), file=sys.stderr)
if mode in ("all", "zero-copy"):
    if nvenc:
        print("zero-copy")
    elif mode == "zero-copy":
        no(f"the zero-copy pass needs NVENC, and GPU {gpu['index']} has none (MODE=hybrid runs the plan for it)")
    else:
        print("gpu-smoke: zero-copy pass skipped: no NVENC on this GPU; the hybrid pass is its plan", file=sys.stderr)
if mode in ("all", "hybrid"):
    print("hybrid")
if mode in ("all", "faults"):
    print("faults")
PY

metrics() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics"; }
counter() { # counter NAME LABEL_SUBSTRING...: the sum of the matching series (0 if none)
  local name=$1
  shift
  metrics | python3 -c '
import sys
name, subs = sys.argv[1], sys.argv[2:]
total = 0.0
for line in sys.stdin:
    if line.startswith(name + "{") and all(s in line for s in subs):
        total += float(line.split()[-1])
print(int(total))' "$name" "$@"
}

# start_daemon NAME DIR HARDWARE [ENV=VALUE...]: ladderd on the smoke ports with the smoke ladder,
# pinned to the GPU the probe chose, with ENV in its environment; returns once RTMP listens.
start_daemon() {
  local name=$1 dir=$2 hardware=$3
  shift 3
  mkdir -p "$dir"
  cat >"$dir/ladderd.yaml" <<YAML
rtmp:  { listen: "127.0.0.1:$RTMP_PORT", reconnect_grace: 0 }
http:  { listen: "127.0.0.1:$HTTP_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
hls:   { segment_duration: 2.0, window: 6 }
log:   { format: json, level: "info,ladderd::transcode=debug" }
transcode:
  hardware: $hardware
  gpus: [$(cat "$work/probe.json.gpu")]
ladders:
  smoke:
    - { name: "720p", width: 1280, height: 720, video_bitrate: 3000000 }
    - { name: "480p", width: 854,  height: 480, video_bitrate: 1200000 }
    - { name: "360p", width: 640,  height: 360, video_bitrate: 700000 }
channels:
  - { name: "$CHANNEL", stream_key: "$KEY", ladder: "smoke" }
YAML
  "$bin" check-config "$dir/ladderd.yaml" || fail "$name: the smoke configuration does not validate"
  env "$@" "$bin" run --config "$dir/ladderd.yaml" >"$dir/ladderd.log" 2>&1 &
  daemon=$!
  for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$RTMP_PORT") 2>/dev/null; then return; fi
    kill -0 "$daemon" 2>/dev/null || { cat "$dir/ladderd.log" >&2; fail "$name: ladderd exited at start"; }
    sleep 0.2
  done
}

stop_daemon() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  daemon=""
}

# publish_for SECONDS: one publish of the 1280x720 testsrc2 pattern with a tone, waited for.
publish_for() {
  ffmpeg -hide_banner -loglevel error -nostdin -re \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$1" \
    -c:v libx264 -preset veryfast -tune zerolatency -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p -b:v 2500k \
    -c:a aac -b:a 128k -f flv "rtmp://127.0.0.1:$RTMP_PORT/live/$KEY"
}

# run_pass NAME HARDWARE DECODE SCALE ENCODE [ENV=VALUE...]: one daemon, one publish, every check.
run_pass() {
  local name=$1 hardware=$2 want_decode=$3 want_scale=$4 want_encode=$5
  shift 5
  local dir="$work/$name"
  mkdir -p "$dir"
  step "$name: start ladderd (transcode.hardware: $hardware${*:+, $*})"
  start_daemon "$name" "$dir" "$hardware" "$@"

  step "$name: publish ${DURATION}s of 1280x720 testsrc2"
  publish_for "$DURATION" &
  publisher=$!

  # GPU utilization while the stream runs: nvidia-smi dmon's sm/mem/enc/dec columns, once a second.
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi dmon -s u -d 1 >"$dir/dmon.txt" 2>&1 &
    dmon=$!
  fi

  local settle=$((DURATION / 3))
  sleep "$settle"
  kill -0 "$daemon" 2>/dev/null || { tail -20 "$dir/ladderd.log" >&2; fail "$name: ladderd exited while publishing"; }
  declare -A before
  local spec rung
  for spec in $RUNGS; do
    rung=${spec%%:*}
    before[$rung]=$(counter ladderd_frames_encoded_total "channel=\"$CHANNEL\"" "rung=\"$rung\"")
  done
  local t0
  t0=$(date +%s.%N)

  step "$name: plan and GPU path (from the log)"
  # Every check reads the JSON log: the plan line, the graph line, each encoder's input, and any
  # FFmpeg error (FFmpeg's log arrives in the same log, target "ffmpeg").
  python3 - "$dir/ladderd.log" "$want_decode" "$want_scale" "$want_encode" <<'PY' || fail "$name: the GPU path did not run as planned (above; log: $dir/ladderd.log)"
import json, sys
path, want = sys.argv[1], dict(zip(("decode", "scale", "encode"), sys.argv[2:5]))
events = []
for line in open(path, errors="replace"):
    try:
        events.append(json.loads(line))
    except ValueError:
        pass
msg = lambda e: e.get("message", "")
bad = False
def check(ok, text):
    global bad
    print(("  ok    " if ok else "  FAIL  ") + text)
    bad |= not ok
for e in events:
    if "transcode.hardware is nvidia but" in msg(e) or "refused" in msg(e):
        print("  log:  " + msg(e) + " " + str(e.get("refused", "")))
plans = [e for e in events if msg(e) == "transcode backends chosen"]
check(bool(plans), "a plan was logged")
if plans:
    p = plans[-1]
    got = {k: str(p.get(k, "?")).strip('"') for k in want}
    check(got == want, f"plan decode={got['decode']} scale={got['scale']} encode={got['encode']} gpu={p.get('gpu')} (expected {want})")
graphs = [e for e in events if msg(e).startswith("scaling graph built")]
check(bool(graphs), "the channel's scaling graph was built: " + (graphs[-1].get("graph", "") if graphs else "none"))
opened = [e for e in events if msg(e) == "encoder opened"]
gpu_frames = {e.get("rung"): (e.get("encoder"), e.get("gpu_frames")) for e in opened}
for rung, (encoder, frames) in sorted(gpu_frames.items()):
    expect = want["encode"] == "nvidia"
    check(frames == expect and (encoder == "h264_nvenc") == expect,
          f"rung {rung}: {encoder}, " + ("fed GPU frames (zero-copy)" if frames else "fed system-memory frames (downloaded)"))
check(len(gpu_frames) == 3, f"{len(gpu_frames)} of 3 encoders opened")
for e in events:
    if "fall" in msg(e) or "failed" in msg(e) or e.get("target") == "ffmpeg" and e.get("level") in ("ERROR", "WARN"):
        print(f"  log:  {e.get('level')} {e.get('target')} {msg(e)} {e.get('error', e.get('reason', ''))}")
sys.exit(1 if bad else 0)
PY
  local stage n
  for stage in decoder_fallback scaler_fallback encoder_fallback; do
    n=$(counter ladderd_pipeline_errors_total "channel=\"$CHANNEL\"" "stage=\"$stage\"")
    [ "$n" = 0 ] || fail "$name: ladderd_pipeline_errors_total{stage=\"$stage\"} is $n: part of the work moved to the CPU (log: $dir/ladderd.log)"
    echo "  ok    $stage: 0"
  done

  step "$name: renditions"
  local want got url errors
  for spec in $RUNGS; do
    rung=${spec%%:*}
    want=${spec#*:}
    url="http://127.0.0.1:$HTTP_PORT/live/$CHANNEL/$rung/index.m3u8"
    # The HLS demuxer lists the stream once per program it belongs to: keep the first line.
    got=$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height -of csv=p=0 "$url") ||
      fail "$name: $rung: ffprobe cannot read $url"
    got=$(printf '%s\n' "$got" | awk 'NF { print; exit }')
    [ "$got" = "h264,${want/x/,}" ] || fail "$name: $rung: expected h264 $want, ffprobe says '$got'"
    errors=$(ffmpeg -hide_banner -nostdin -v error -i "$url" -map 0:v:0 -t 4 -f null - 2>&1) ||
      fail "$name: $rung: decoding failed: $errors"
    [ -z "$errors" ] || fail "$name: $rung: the decoder reported errors: $errors"
    echo "  ok    $rung: h264 $want, decodes cleanly"
  done

  step "$name: encode rate (frames_encoded_total over time) and GPU utilization"
  sleep "$settle" # a window of at least DURATION/3 seconds, still within the publish
  local t1 after fps
  t1=$(date +%s.%N)
  for spec in $RUNGS; do
    rung=${spec%%:*}
    after=$(counter ladderd_frames_encoded_total "channel=\"$CHANNEL\"" "rung=\"$rung\"")
    fps=$(python3 -c "print(f'{($after - ${before[$rung]}) / ($t1 - $t0):.1f}')")
    echo "  $rung: $fps fps (source: 30 fps)"
    [ "$after" -gt "${before[$rung]}" ] || fail "$name: $rung: no frames encoded while publishing"
  done
  if [ -n "$dmon" ]; then
    kill "$dmon" 2>/dev/null || true
    wait "$dmon" 2>/dev/null || true
    dmon=""
    # Peak and mean of each utilization column over the samples taken while publishing.
    python3 - "$dir/dmon.txt" "$want_decode" "$want_encode" <<'PY' || true
import sys
path, dec_gpu, enc_gpu = sys.argv[1], sys.argv[2] == "nvidia", sys.argv[3] == "nvidia"
cols, rows = None, []
for line in open(path, errors="replace"):
    parts = line.split()
    if line.startswith("#") and "gpu" in parts:
        cols = parts[1:]
    elif cols and parts and not line.startswith("#"):
        rows.append(dict(zip(cols, parts)))
if not rows:
    print("  (nvidia-smi dmon gave no samples)")
    sys.exit(0)
for col in ("sm", "mem", "enc", "dec"):
    vals = [int(r[col]) for r in rows if r.get(col, "-").isdigit()]
    if vals:
        print(f"  GPU {col:<4} peak {max(vals):3d} %, mean {sum(vals) / len(vals):5.1f} % over {len(vals)} s")
def peak(col):
    return max([int(r[col]) for r in rows if r.get(col, "-").isdigit()] or [0])
if dec_gpu and peak("dec") == 0:
    print("  warning: NVDEC utilization stayed at 0 % (a large GPU may round one 720p stream down to 0)")
if enc_gpu and peak("enc") == 0:
    print("  warning: NVENC utilization stayed at 0 %")
PY
  else
    echo "  (nvidia-smi is not installed; GPU utilization not shown)"
  fi
  echo "  backends (ladderd_backend_info):"
  metrics | grep "^ladderd_backend_info{.*} 1" | sed 's/^/    /' || echo "    (not exported by this build)"

  wait "$publisher" || fail "$name: the publisher (ffmpeg) failed"
  publisher=""
  kill -0 "$daemon" 2>/dev/null || { tail -20 "$dir/ladderd.log" >&2; fail "$name: ladderd exited during the test"; }
  stop_daemon
  echo "  $name: PASS"
}

run_faults() {
  local gpu dir n
  gpu=$(cat "$work/probe.json.gpu")
  dir="$work/faults-quarantine"
  step "faults: NVDEC made to fail once in each of three publishes (LADDERD_FAULTS)"
  start_daemon faults "$dir" auto LADDERD_FAULTS="decode:fail@$CHANNEL:after=90:times=3"
  for i in 1 2 3; do
    publish_for 6 || fail "faults: the publisher (ffmpeg) failed"
    sleep 1
    n=$(counter ladderd_pipeline_errors_total "channel=\"$CHANNEL\"" 'stage="decoder_fallback"')
    [ "$n" = "$i" ] || fail "faults: after publish $i, decoder_fallback is $n (log: $dir/ladderd.log)"
    echo "  ok    publish $i: NVDEC failed and decoding moved to the CPU (decoder_fallback $n)"
  done
  n=$(counter ladderd_gpu_quarantined "gpu=\"$gpu\"")
  [ "$n" = 1 ] || fail "faults: GPU $gpu is not quarantined after three failures (ladderd_gpu_quarantined $n)"
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" | tee "$dir/readyz.json" | grep -q quarantined_gpus ||
    fail "faults: /readyz does not list the quarantined GPU: $(cat "$dir/readyz.json")"
  echo "  ok    GPU $gpu quarantined: $(cat "$dir/readyz.json")"
  publish_for 6 || fail "faults: the publisher (ffmpeg) failed"
  python3 - "$dir/ladderd.log" <<'PY' || fail "faults: the publish after the quarantine was not placed on the CPU"
import json, sys
plans = [e for e in map(lambda l: json.loads(l) if l.startswith("{") else {}, open(sys.argv[1], errors="replace"))
         if e.get("message") == "transcode backends chosen"]
last = plans[-1]
print(f"  ok    the fourth publish: decode={last.get('decode')} scale={last.get('scale')} encode={last.get('encode')}")
sys.exit(0 if all(str(last.get(k)).strip('"') == "cpu" for k in ("decode", "scale", "encode")) else 1)
PY
  stop_daemon

  dir="$work/faults-stall"
  step "faults: NVDEC made to hang 5 s into a publish (LADDERD_FAULTS)"
  start_daemon faults "$dir" auto LADDERD_FAULTS="decode:hang@$CHANNEL:after=150"
  publish_for 20 &
  publisher=$!
  sleep 14
  n=$(counter ladderd_pipeline_errors_total "channel=\"$CHANNEL\"" 'stage="decoder_stalled"')
  [ "$n" = 1 ] || fail "faults: decoder_stalled is $n, not 1 (log: $dir/ladderd.log)"
  echo "  ok    the stuck decoder was left behind (decoder_stalled 1)"
  metrics | grep '^ladderd_backend_info{.*stage="decode".*} 1' | grep -q 'backend="cpu"' ||
    fail "faults: ladderd_backend_info does not show decode on the CPU after the stall"
  echo "  ok    ladderd_backend_info: decode on the CPU"
  local spec rung url errors
  for spec in $RUNGS; do
    rung=${spec%%:*}
    url="http://127.0.0.1:$HTTP_PORT/live/$CHANNEL/$rung/index.m3u8"
    errors=$(ffmpeg -hide_banner -nostdin -v error -live_start_index -2 -i "$url" -map 0:v:0 -t 2 -f null - 2>&1) ||
      fail "faults: $rung: decoding after the stall failed: $errors"
    echo "  ok    $rung decodes after the stall"
  done
  wait "$publisher" || true
  publisher=""
  stop_daemon
  echo "  faults: PASS"
}

for pass in $(cat "$work/passes"); do
  case "$pass" in
    zero-copy) run_pass zero-copy nvidia nvidia nvidia nvidia ;;
    hybrid) run_pass hybrid auto nvidia nvidia cpu LADDERD_NVIDIA_DISABLE=nvenc ;;
    faults) run_faults ;;
  esac
done
echo
echo "gpu-smoke: PASS ($(paste -sd' ' "$work/passes"))"
