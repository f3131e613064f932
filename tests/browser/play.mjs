// Plays an HLS URL with hls.js in headless Chromium and prints what the player saw, as JSON.
// Usage: node play.mjs URL [seconds] [--low-latency] [--level N] [--settle S]
//   --low-latency  hls.js lowLatencyMode (LL-HLS parts, blocking reloads)
//   --level N      play only level N (hls.js orders levels by bitrate, lowest first)
//   --settle S     leave the first S seconds of playback out of the latency figures
// The report has, besides hls.js's own counters: stalls (video `waiting` events after playback
// started) and how long they lasted, the part request rate, and glass-to-glass latency (wall clock
// minus hls.playingDate, which comes from EXT-X-PROGRAM-DATE-TIME) as min/p50/p95/max. For a
// failure's diagnosis it also has the video's buffered ranges in each sample and the last requests
// to the origin (path, status, when sent and how long they took), with any still unanswered.
// The page and hls.js are served from a throwaway local server, so nothing comes from the internet.
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const [url, secondsArg, ...flags] = process.argv.slice(2);
if (!url) {
  console.error('usage: node play.mjs URL [seconds] [--low-latency] [--level N] [--settle S]');
  process.exit(2);
}
const seconds = Number(secondsArg ?? 8);
const lowLatency = flags.includes('--low-latency');
const option = name => {
  const i = flags.indexOf(name);
  return i >= 0 ? Number(flags[i + 1]) : null;
};
const level = option('--level');
const settle = option('--settle') ?? 0;
const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'));

const page = `<!doctype html><meta charset="utf-8"><video id="v" muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
  const report = { events: [], levels: [], fragsLoaded: 0, partsLoaded: 0, errors: [], levelSwitched: [],
    partsByType: {}, stalls: 0, stalledMs: 0, playingSince: null, firstPartAt: null, lastPartAt: null, metadata: [] };
  window.report = report;
  const video = document.getElementById('v');
  const level = ${JSON.stringify(level)};
  const hls = new Hls({ lowLatencyMode: ${lowLatency}, debug: false, ...(level === null ? {} : { startLevel: level }) });
  hls.on(Hls.Events.MANIFEST_PARSED, (_e, d) => {
    report.levels = d.levels.map(l => ({ width: l.width, height: l.height, bitrate: l.bitrate, codecs: l.codecSet || l.attrs.CODECS }));
    // Setting currentLevel also turns adaptive switching off.
    if (level !== null) hls.currentLevel = level;
    video.play().catch(e => report.errors.push('play: ' + e));
  });
  // Timed metadata as hls.js hands it over (ID3 from fMP4 emsg or TS timed-ID3 PES): the raw tag,
  // its media time, and the wall-clock time that media time stands for (EXT-X-PROGRAM-DATE-TIME).
  hls.on(Hls.Events.FRAG_PARSING_METADATA, (_e, d) => {
    for (const s of d.samples) {
      const wall = d.frag.programDateTime === null ? null : d.frag.programDateTime + (s.pts - d.frag.start) * 1000;
      report.metadata.push({ type: d.frag.type, sn: d.frag.sn, level: d.frag.level, pts: s.pts, wall,
        tag: btoa(String.fromCharCode(...s.data)) });
    }
  });
  hls.on(Hls.Events.FRAG_LOADED, (_e, d) => {
    if (d.part) {
      report.partsLoaded++;
      report.partsByType[d.frag.type] = (report.partsByType[d.frag.type] ?? 0) + 1;
      report.firstPartAt ??= Date.now();
      report.lastPartAt = Date.now();
    } else {
      report.fragsLoaded++;
    }
  });
  // A stall: the video waits for data after it has started playing.
  let waitingSince = null;
  video.addEventListener('playing', () => {
    report.playingSince ??= Date.now();
    if (waitingSince !== null) report.stalledMs += Date.now() - waitingSince;
    waitingSince = null;
  });
  video.addEventListener('waiting', () => {
    if (report.playingSince === null || waitingSince !== null) return;
    report.stalls++;
    waitingSince = Date.now();
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_e, d) => report.levelSwitched.push(d.level));
  hls.on(Hls.Events.ERROR, (_e, d) => report.errors.push((d.fatal ? 'FATAL ' : '') + d.type + ':' + d.details));
  hls.loadSource(${JSON.stringify(url)});
  hls.attachMedia(video);
  window.hls = hls;
</script>`;

const server = http.createServer((req, res) => {
  if (req.url === '/hls.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(hlsJs);
  } else {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  }
});
await new Promise(r => server.listen(0, '127.0.0.1', r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ladderd-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
});
let result;
try {
  const tab = context.pages()[0] ?? await context.newPage();
  const requests = [];
  const sent = new Map();
  const t0 = Date.now();
  tab.on('request', r => {
    if (r.url().startsWith(pageUrl)) return;
    const u = new URL(r.url());
    const entry = { at: Date.now() - t0, path: u.pathname + u.search, status: null, ms: null };
    sent.set(r, entry);
    requests.push(entry);
  });
  const settled = (r, status) => {
    const entry = sent.get(r);
    if (!entry) return;
    sent.delete(r);
    entry.status = status;
    entry.ms = Date.now() - t0 - entry.at;
  };
  tab.on('requestfinished', async r => settled(r, (await r.response())?.status() ?? 'no response'));
  tab.on('requestfailed', r => settled(r, 'failed: ' + (r.failure()?.errorText ?? '?')));
  await tab.goto(pageUrl);
  const samples = [];
  const start = Date.now();
  while (Date.now() - start < seconds * 1000) {
    await tab.waitForTimeout(500);
    samples.push(await tab.evaluate(() => ({
      t: document.getElementById('v').currentTime,
      paused: document.getElementById('v').paused,
      width: document.getElementById('v').videoWidth,
      height: document.getElementById('v').videoHeight,
      latency: window.hls.latency,
      buffered: (b => Array.from({ length: b.length }, (_, i) => [b.start(i), b.end(i)]))(document.getElementById('v').buffered),
      playingDate: window.hls.playingDate ? window.hls.playingDate.getTime() : null,
      now: Date.now(),
    })));
  }
  const report = await tab.evaluate(() => window.report);
  const latency = samples
    .filter(s => s.playingDate !== null && report.playingSince !== null && s.now >= report.playingSince + settle * 1000)
    .map(s => s.now - s.playingDate)
    .sort((a, b) => a - b);
  const at = q => latency[Math.min(latency.length - 1, Math.floor(q * latency.length))];
  const partSpan = (report.lastPartAt - report.firstPartAt) / 1000;
  result = {
    ...report,
    latencyMs: latency.length ? { n: latency.length, min: latency[0], p50: at(0.5), p95: at(0.95), max: latency.at(-1) } : null,
    partsPerSecond: report.partsLoaded > 1 && partSpan > 0 ? (report.partsLoaded - 1) / partSpan : 0,
    samples,
    lastRequests: requests.slice(-40),
    unanswered: requests.filter(r => r.status === null),
  };
} finally {
  await context.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
