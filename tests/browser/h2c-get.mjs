// GETs URLs over one HTTP/2 cleartext connection (prior knowledge, RFC 9113 §3.3), all at once,
// as a CDN or player multiplexes them, and prints [{ status, ms, body (hex) }] in URL order.
// Node's own HTTP/2 client: Debian's curl 7.88 fails on a second stream with h2c prior knowledge.
// Usage: node h2c-get.mjs URL...   (all on the same origin)
import http2 from 'node:http2';

const urls = process.argv.slice(2);
if (urls.length === 0) {
  console.error('usage: node h2c-get.mjs URL...');
  process.exit(2);
}
const session = http2.connect(new URL(urls[0]).origin);
session.on('error', e => {
  console.error(`h2c session: ${e}`);
  process.exit(1);
});
const start = Date.now();
const results = await Promise.all(urls.map(u => new Promise((resolve, reject) => {
  const url = new URL(u);
  const req = session.request({ ':method': 'GET', ':path': url.pathname + url.search });
  const chunks = [];
  let status = 0;
  req.on('response', h => { status = h[':status']; });
  req.on('data', c => chunks.push(c));
  req.on('end', () => resolve({ status, ms: Date.now() - start, body: Buffer.concat(chunks).toString('hex') }));
  req.on('error', reject);
  req.end();
})));
session.close();
process.stdout.write(JSON.stringify(results));
