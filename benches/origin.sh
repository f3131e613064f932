#!/usr/bin/env bash
# Origin throughput: requests per second ladderd's HTTP origin answers for what a CDN shield asks
# of it, against nginx serving the same bytes from memory-backed files in one run.
#
# A 360p channel is published live (so playlists and parts change while the load runs, as in
# production); wrk then loads each kind of object in turn over keep-alive connections: the media
# playlist (plain and gzip), the newest complete segment, and one of its parts. The same objects,
# copied once into a tmpfs directory, are then served by nginx (sendfile, open_file_cache,
# gzip_static for the playlist) with the same load. Both servers and wrk share this machine's
# cores, so figures are for comparing the two, not a box's capacity on its own.
# Usage: benches/origin.sh [seconds per run] [connections]   (defaults 10 and 64; installs wrk and
# nginx-light from Debian's packages when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-64}"
export PATH="$HOME/.cargo/bin:$PATH"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "origin bench: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's package starts a system nginx on :80; this bench runs its own.
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now nginx.service >/dev/null 2>&1 || true
  fi
fi
cargo build --release --locked --quiet

# Ports apart from the other benches, so they can run on one machine.
rtmp_port=19551 http_port=18281 admin_port=19291 nginx_port=18282
work=$(mktemp -d)
daemon="" publisher="" nginx_pid=""
cleanup() {
  [ -n "$publisher" ] && kill "$publisher" 2>/dev/null
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The segment and part loaded first must stay in the window through their runs (3 of them).
window=$(( (3 * secs + 1) / 2 + 3 )); [ "$window" -gt 100 ] && window=100
cat > "$work/origin.yaml" <<YAML
rtmp:  { listen: "127.0.0.1:$rtmp_port" }
http:  { listen: "127.0.0.1:$http_port" }
admin: { listen: "127.0.0.1:$admin_port" }
hls:   { segment_duration: 2.0, window: $window }
transcode: { x264_preset: ultrafast }
log: { level: warn }
ladders:
  small:
    - { name: "360p", width: 640, height: 360, video_bitrate: 700000 }
channels:
  - { name: "bench", stream_key: "bench-key", ladder: "small" }
YAML

./target/release/ladderd run --config "$work/origin.yaml" &
daemon=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$rtmp_port") 2>/dev/null && break; sleep 0.1; done

# Live for the whole bench: six runs and the set-up around them.
ffmpeg -hide_banner -loglevel error -nostdin -re \
  -f lavfi -i "testsrc2=size=640x360:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -t $((secs * 8 + 30)) \
  -c:v libx264 -preset ultrafast -tune zerolatency -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p -b:v 1000k \
  -c:a aac -b:a 128k -f flv "rtmp://127.0.0.1:$rtmp_port/live/bench-key" 2>/dev/null &
publisher=$!

base="http://127.0.0.1:$http_port/live/bench/360p"
for _ in $(seq 1 200); do
  # Two complete segments, so that the one loaded stays in the window for a while.
  [ "$(curl -sf "$base/index.m3u8" | grep -c '^[0-9]*\.m4s$' || true)" -ge 2 ] && break
  sleep 0.1
done
playlist=$(curl -sf "$base/index.m3u8") || { echo "no playlist at $base/index.m3u8" >&2; exit 1; }
segment=$(grep '^[0-9]*\.m4s$' <<<"$playlist" | tail -n 1)
part="${segment%.m4s}.0.m4s"
[ -n "$segment" ] || { echo "no complete segment in:" >&2; echo "$playlist" >&2; exit 1; }

# nginx: the same objects as files on tmpfs (a snapshot: nginx has no live edge to follow).
mkdir -p "$work/www/live/bench/360p" "$work/nginx"
for name in index.m3u8 "$segment" "$part"; do
  curl -sf -o "$work/www/live/bench/360p/$name" "$base/$name"
done
gzip -k -9 "$work/www/live/bench/360p/index.m3u8"
# nginx's workers run as an unprivileged user when started as root.
chmod 755 "$work"; chmod -R a+rX "$work/www"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  open_file_cache max=1000;
  types { application/vnd.apple.mpegurl m3u8; video/iso.segment m4s; }
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
    gzip_static on;
  }
}
NGINX
/usr/sbin/nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
nginx_pid=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null && break; sleep 0.1; done

# One wrk run: "requests/s p50 p99 MB/s".
load() {
  local url="$1"; shift
  wrk -t 2 -c "$conns" -d "${secs}s" --latency "$@" "$url" | awk '
    /Requests\/sec/ { rps = $2 }
    /Transfer\/sec/ { v = $2; if (v ~ /GB/) f = 1024; else if (v ~ /MB/) f = 1; else if (v ~ /KB/) f = 1 / 1024; else f = 1 / 1048576; sub(/[A-Za-z]+$/, "", v); mbs = v * f }
    /^ +50%/ { p50 = $2 }
    /^ +99%/ { p99 = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%10.0f req/s  p50 %8s  p99 %8s  %8.1f MB/s%s\n", rps, p50, p99, mbs, (bad ? "  NON-2xx " bad : "") }'
}

size() { stat -c %s "$work/www/live/bench/360p/$1"; }
printf 'origin, %s connections, %s s per run, %s cores shared by server, wrk and a live publish\n' \
  "$conns" "$secs" "$(nproc)"
printf '  segment %s (%s B)\n' "$segment" "$(size "$segment")"
printf '    ladderd  '; load "$base/$segment"
printf '    nginx    '; load "http://127.0.0.1:$nginx_port/live/bench/360p/$segment"
printf '  part %s (%s B)\n' "$part" "$(size "$part")"
printf '    ladderd  '; load "$base/$part"
printf '    nginx    '; load "http://127.0.0.1:$nginx_port/live/bench/360p/$part"
# The live playlist has grown since the snapshot: take it again, so both serve the same text.
curl -sf -o "$work/www/live/bench/360p/index.m3u8" "$base/index.m3u8"
gzip -f -k -9 "$work/www/live/bench/360p/index.m3u8"
chmod -R a+rX "$work/www"
printf '  media playlist (%s B, %s segments)\n' "$(size index.m3u8)" "$(grep -c '^#EXTINF' "$work/www/live/bench/360p/index.m3u8")"
printf '    ladderd  '; load "$base/index.m3u8"
printf '    nginx    '; load "http://127.0.0.1:$nginx_port/live/bench/360p/index.m3u8"
printf '  media playlist, gzip (%s B)\n' "$(size index.m3u8.gz)"
printf '    ladderd  '; load "$base/index.m3u8" -H 'Accept-Encoding: gzip'
printf '    nginx    '; load "http://127.0.0.1:$nginx_port/live/bench/360p/index.m3u8" -H 'Accept-Encoding: gzip'
