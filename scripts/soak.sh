#!/usr/bin/env bash
# Soak: runs the release build for MINUTES (default 30) with two channels: `steady`, published
# once for the whole run, and `flaky`, whose encoder reconnects every minute (killed with SIGKILL
# on odd minutes, so its playlists are held open for rtmp.reconnect_grace and resumed; stopped
# cleanly on even ones, so they end and start again). hls.js in headless Chromium plays each
# channel in low-latency mode, two minutes per play, from start to end; timed metadata is posted
# to both every two seconds. Every 10 s the daemon's resident memory, open files and threads go
# into target/soak/soak.csv, plotted into target/soak/soak.png at the end.
#
# Prints the RSS at 5 minutes (at half the run when it is shorter than 10 minutes) and at the
# end, and exits 1 when the end is more than 10 % above it; also when a player reported a fatal
# hls.js error or the daemon died.
#
# Usage: scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

minutes=${1:-30}
duration=$((minutes * 60))
out=target/soak
rm -rf "$out"
mkdir -p "$out"

command -v gnuplot >/dev/null 2>&1 || {
  echo "soak: installing gnuplot-nox (for the plot)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q gnuplot-nox >/dev/null
}
scripts/setup.sh
cargo build --release --locked

token=soak-admin-token-0123456789
rtmp=127.0.0.1:19350
http=127.0.0.1:18080
admin=127.0.0.1:19090
cat >"$out/ladderd.yaml" <<YAML
rtmp: { listen: "$rtmp" }
http: { listen: "$http" }
admin: { listen: "$admin", token: "$token" }
hls: { segment_duration: 2.0, window: 6 }
transcode: { hardware: cpu, x264_preset: superfast, encoder_threads: 1 }
ladders:
  soak:
    - { name: 360p, width: 640, height: 360, video_bitrate: 700000 }
    - { name: 180p, width: 320, height: 180, video_bitrate: 250000 }
channels:
  - { name: steady, stream_key: steady-soak-key-0123456789, ladder: soak }
  - { name: flaky, stream_key: flaky-soak-key-01234567890, ladder: soak }
YAML

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "ladderd-soak-publisher" 2>/dev/null || true
  pkill -f "play.mjs http://$http" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

./target/release/ladderd run --config "$out/ladderd.yaml" >"$out/ladderd.log" 2>&1 &
daemon=$!
pids+=("$daemon")
for _ in $(seq 1 100); do
  curl -sf "http://$admin/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# A 640x360 test pattern with a tone, as an encoder sends it; `-metadata` names the process for
# cleanup.
publisher() {
  exec ffmpeg -hide_banner -loglevel error -nostdin -re \
    -f lavfi -i "testsrc2=size=640x360:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$2" \
    -c:v libx264 -preset ultrafast -tune zerolatency -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p \
    -b:v 1200k -c:a aac -b:a 96k -metadata comment=ladderd-soak-publisher -f flv "rtmp://$rtmp/live/$1"
}

publisher steady-soak-key-0123456789 $((duration + 60)) 2>>"$out/publishers.log" &
pids+=($!)

# The flaky encoder: a minute on, then gone (killed or stopped by turns), back 2 s later.
(
  minute=0
  while :; do
    publisher flaky-soak-key-01234567890 3600 2>>"$out/publishers.log" &
    p=$!
    sleep 60
    minute=$((minute + 1))
    if [ $((minute % 2)) -eq 1 ]; then kill -KILL "$p"; else kill -INT "$p"; fi
    wait "$p" 2>/dev/null || true
    sleep 2
  done
) &
pids+=($!)

# Players: two-minute plays, one after another, per channel.
for channel in steady flaky; do
  (
    n=0
    sleep 6
    while :; do
      n=$((n + 1))
      node tests/browser/play.mjs "http://$http/live/$channel/master.m3u8" 120 --low-latency \
        >"$out/play-$channel-$n.json" 2>>"$out/players.log" || true
    done
  ) &
  pids+=($!)
done

# Timed metadata, every two seconds to each channel (409 while a channel is not live).
(
  i=0
  while :; do
    i=$((i + 1))
    for channel in steady flaky; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
        --data "{\"type\":\"poll\",\"n\":$i}" "http://$admin/api/v1/channels/$channel/metadata" || echo 000)
      echo "$channel $code" >>"$out/metadata.log"
    done
    sleep 2
  done
) &
pids+=($!)

echo "seconds,rss_kib,open_files,threads" >"$out/soak.csv"
start=$(date +%s)
echo "soak: ${minutes} min; samples in $out/soak.csv"
while :; do
  now=$(($(date +%s) - start))
  if ! kill -0 "$daemon" 2>/dev/null; then
    echo "soak: the daemon died after ${now} s (see $out/ladderd.log)" >&2
    exit 1
  fi
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$daemon/status")
  files=$(find "/proc/$daemon/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "$now,$rss,$files,$threads" >>"$out/soak.csv"
  [ "$now" -ge "$duration" ] && break
  sleep 10
done

# The players still running report nothing; the finished ones are judged.
kill -TERM "$daemon"
stop_started=$(date +%s)
wait "$daemon" || { echo "soak: ladderd exited with an error on SIGTERM" >&2; exit 1; }
stopped_in=$(($(date +%s) - stop_started))

gnuplot <<GP
set terminal pngcairo size 1000,900
set output "$out/soak.png"
set datafile separator ","
set key off
set grid
set xlabel "minutes"
set multiplot layout 3,1 title "ladderd soak (${minutes} min): two channels, one reconnecting every minute"
set ylabel "RSS (MiB)"
plot "$out/soak.csv" every ::1 using (\$1/60):(\$2/1024) with lines lw 2
set ylabel "open files"
plot "$out/soak.csv" every ::1 using (\$1/60):3 with lines lw 2
set ylabel "threads"
plot "$out/soak.csv" every ::1 using (\$1/60):4 with lines lw 2
unset multiplot
GP

python3 - "$out" "$duration" "$stopped_in" <<'PY'
import csv, glob, json, sys
out, duration, stopped_in = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [tuple(int(v) for v in r) for r in list(csv.reader(open(f"{out}/soak.csv")))[1:]]
base_at = 300 if duration >= 600 else duration // 2
base = min(rows, key=lambda r: abs(r[0] - base_at))
end = rows[-1]
growth = (end[1] - base[1]) / base[1]
plays = fatal = stalls = 0
for path in sorted(glob.glob(f"{out}/play-*.json")):
    try:
        report = json.load(open(path))
    except (ValueError, OSError):
        continue  # a play still running at the end
    plays += 1
    fatal += sum(1 for e in report.get("errors", []) if isinstance(e, str) and e.startswith("FATAL"))
    stalls += report.get("stalls") or 0
codes = {}
for line in open(f"{out}/metadata.log"):
    channel, code = line.split()
    codes.setdefault(channel, {}).setdefault(code, 0)
    codes[channel][code] += 1
print(f"RSS at {base[0]} s: {base[1] / 1024:.1f} MiB; at {end[0]} s: {end[1] / 1024:.1f} MiB ({growth:+.1%})")
print(f"open files {base[2]} -> {end[2]}, threads {base[3]} -> {end[3]}")
print(f"plays {plays} (fatal hls.js errors {fatal}, stalls {stalls}); metadata posts {codes}")
print(f"SIGTERM to exit: {stopped_in} s")
print(f"plot: {out}/soak.png")
ok = growth <= 0.10 and fatal == 0 and plays > 0
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
