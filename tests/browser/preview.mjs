// Opens ladderd's preview page (GET /preview/{channel}) in headless Chromium, waits until the video
// plays and then until a timed-metadata card is on screen, screenshots the page, and prints JSON:
// { played, latency, cards: [{ type, text }], toasts: [text], metadata, errors }.
// Usage: node preview.mjs URL OUT.png [seconds]
//   seconds  how long to wait for playback, and then again for a card (default 30)
// Exits 0 with played or cards empty when they never come, so the caller sees the whole report.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, out, secondsArg] = process.argv.slice(2);
if (!url || !out) {
  console.error('usage: node preview.mjs URL OUT.png [seconds]');
  process.exit(2);
}
const seconds = Number(secondsArg ?? 30);

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ladderd-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1100, height: 800 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
});
let result;
try {
  const tab = context.pages()[0] ?? await context.newPage();
  const console_ = [];
  tab.on('console', m => { if (m.type() === 'error') console_.push(m.text()); });
  tab.on('pageerror', e => console_.push(String(e)));
  const response = await tab.goto(url);
  const status = response ? response.status() : null;

  // Played: the page saw `playing` and the media clock moves.
  const played = await tab.waitForFunction(() => {
    const v = document.getElementById('video');
    return window.preview?.playing && v.currentTime > 0.5 && !v.paused;
  }, null, { timeout: seconds * 1000, polling: 200 }).then(() => true, () => false);

  // Cards come and go (about 8 s each), so watch for the first one rather than look once.
  let card = false;
  if (played) {
    card = await tab.waitForFunction(() => document.querySelector('[data-overlay-type]') !== null,
      null, { timeout: seconds * 1000, polling: 100 }).then(() => true, () => false);
  }
  // Let the card's fade-in (0.25 s) finish so the screenshot shows it as a viewer does.
  if (card) await tab.waitForTimeout(400);
  await tab.screenshot({ path: out });

  result = await tab.evaluate(() => ({
    latency: window.preview?.latency ?? null,
    rendition: document.getElementById('rendition')?.textContent ?? null,
    cards: [...document.querySelectorAll('[data-overlay-type]')]
      .map(e => ({ type: e.dataset.overlayType, text: e.innerText })),
    toasts: [...document.querySelectorAll('[data-overlay="toast"]')].map(e => e.innerText),
    shown: window.preview?.shown ?? [],
    metadata: window.preview?.metadata ?? 0,
    errors: window.preview?.errors ?? [],
    message: document.getElementById('message')?.textContent ?? null,
  }));
  result = { status, played, card, ...result, console: console_ };
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
