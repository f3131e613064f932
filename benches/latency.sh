#!/usr/bin/env bash
# Glass-to-glass latency of LL-HLS as a viewer sees it: hls.js (lowLatencyMode) in headless
# Chromium against ladderd with the shipped configuration (its ladder, 2 s segments, 0.2 s parts).
#
# A 1280x720 30 fps test pattern with a tone is encoded live (`ffmpeg -re`, x264 zerolatency, a
# keyframe every 2 s) and published for 60 s; the player joins as soon as the master playlist
# exists and plays for 50 s. Latency is the wall clock minus hls.playingDate (the picture on
# screen, dated by EXT-X-PROGRAM-DATE-TIME, which ladderd stamps from the ingest clock), sampled
# twice a second after a settling period. Also printed: stalls (the video waiting for data after
# playback began) and LL-HLS parts loaded per second.
# Usage: benches/latency.sh [settle seconds]   (default 10; needs what scripts/setup.sh installs)
set -euo pipefail
cd "$(dirname "$0")/.."
settle="${1:-10}"
publish_secs=60
play_secs=50
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --quiet

# Ports apart from benches/ladder.sh, so both can run on one machine.
rtmp_port=19451 http_port=18181 admin_port=19191
work=$(mktemp -d)
daemon="" publisher=""
cleanup() {
  [ -n "$publisher" ] && kill "$publisher" 2>/dev/null
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The shipped configuration, on loopback ports of its own.
sed -e "s|^rtmp: .*|rtmp:  { listen: \"127.0.0.1:$rtmp_port\" }|" \
    -e "s|^http: .*|http:  { listen: \"127.0.0.1:$http_port\" }|" \
    -e "s|^admin: .*|admin: { listen: \"127.0.0.1:$admin_port\" }|" \
    config/ladderd.yaml > "$work/latency.yaml"
printf 'log: { level: warn }\n' >> "$work/latency.yaml"
grep -q "127.0.0.1:$http_port" "$work/latency.yaml" || { echo "could not rewrite the listen addresses" >&2; exit 1; }

./target/release/ladderd run --config "$work/latency.yaml" &
daemon=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$rtmp_port") 2>/dev/null && break; sleep 0.1; done

ffmpeg -hide_banner -loglevel error -nostdin -re \
  -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$publish_secs" \
  -c:v libx264 -preset veryfast -tune zerolatency -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p -b:v 2500k \
  -c:a aac -b:a 128k -f flv "rtmp://127.0.0.1:$rtmp_port/live/demo-key" &
publisher=$!

master="http://127.0.0.1:$http_port/live/demo/master.m3u8"
for _ in $(seq 1 150); do curl -sf -o /dev/null "$master" && break; sleep 0.1; done
curl -sf -o /dev/null "$master" || { echo "no master playlist at $master" >&2; exit 1; }

node tests/browser/play.mjs "$master" "$play_secs" --low-latency --settle "$settle" > "$work/report.json"
wait "$publisher" || true
publisher=""

node --input-type=module - "$work/report.json" "$settle" <<'JS'
import fs from 'node:fs';
const [file, settle] = process.argv.slice(2);
const r = JSON.parse(fs.readFileSync(file, 'utf8'));
const fatal = r.errors.filter(e => e.startsWith('FATAL'));
const levels = [...new Set(r.samples.map(s => s.height).filter(Boolean))].join('/');
console.log(`LL-HLS glass-to-glass, hls.js lowLatencyMode in headless Chromium, shipped config, ` +
  `1280x720 30 fps source, ${r.samples.length / 2} s played`);
if (r.latencyMs) {
  const l = r.latencyMs;
  console.log(`  latency      p50 ${(l.p50 / 1000).toFixed(2)} s  p95 ${(l.p95 / 1000).toFixed(2)} s ` +
    `(min ${(l.min / 1000).toFixed(2)}, max ${(l.max / 1000).toFixed(2)}, ${l.n} samples after ${settle} s)`);
} else {
  console.log('  latency      no samples (playback never started or had no EXT-X-PROGRAM-DATE-TIME)');
}
console.log(`  stalls       ${r.stalls} (${(r.stalledMs / 1000).toFixed(2)} s waiting)`);
console.log(`  parts        ${r.partsPerSecond.toFixed(1)} per s (${JSON.stringify(r.partsByType)}), ` +
  `${r.fragsLoaded} whole segments`);
console.log(`  levels seen  ${levels || 'none'}p; errors: ${r.errors.length ? r.errors.join(', ') : 'none'}`);
if (fatal.length || !r.latencyMs) process.exit(1);
JS
