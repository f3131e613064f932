// Plays an HLS URL with hls.js in headless Chromium and prints what the player saw, as JSON.
// Usage: node play.mjs URL [seconds] [--low-latency]
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
  console.error('usage: node play.mjs URL [seconds] [--low-latency]');
  process.exit(2);
}
const seconds = Number(secondsArg ?? 8);
const lowLatency = flags.includes('--low-latency');
const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'));

const page = `<!doctype html><meta charset="utf-8"><video id="v" muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
  const report = { events: [], levels: [], fragsLoaded: 0, partsLoaded: 0, errors: [], levelSwitched: [] };
  window.report = report;
  const video = document.getElementById('v');
  const hls = new Hls({ lowLatencyMode: ${lowLatency}, debug: false });
  hls.on(Hls.Events.MANIFEST_PARSED, (_e, d) => {
    report.levels = d.levels.map(l => ({ width: l.width, height: l.height, bitrate: l.bitrate, codecs: l.codecSet || l.attrs.CODECS }));
    video.play().catch(e => report.errors.push('play: ' + e));
  });
  hls.on(Hls.Events.FRAG_LOADED, (_e, d) => { if (d.part) report.partsLoaded++; else report.fragsLoaded++; });
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
      playingDate: window.hls.playingDate ? window.hls.playingDate.getTime() : null,
      now: Date.now(),
    })));
  }
  const report = await tab.evaluate(() => window.report);
  result = { ...report, samples };
} finally {
  await context.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
