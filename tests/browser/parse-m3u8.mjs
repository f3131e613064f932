// Parses HLS playlist text with m3u8-parser, a parser written independently of ladderd, and prints
// what it understood as JSON, so that Rust tests judge the server's playlists by another reading
// than their own.
// Usage: node parse-m3u8.mjs < index.m3u8           one playlist in, one JSON object out
//        node parse-m3u8.mjs --array < texts.json   a JSON array of playlist texts in, an array out
// Each object: the parser's manifest (segments with their parts, preloadSegment, renditionReports,
// serverControl, partInf, skip, mediaSequence, targetDuration, endList …), plus preloadHints (those
// of the trailing parts-only segment, where the parser keeps them) and warnings (what the parser
// complained about; a valid playlist gives none).
import { Parser } from 'm3u8-parser';

function parse(text) {
  const parser = new Parser();
  const warnings = [];
  parser.on('warn', w => warnings.push(w.message));
  parser.push(text);
  parser.end();
  const m = parser.manifest;
  return { ...m, preloadHints: m.preloadSegment?.preloadHints ?? [], warnings };
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = Buffer.concat(chunks).toString('utf8');
const out = process.argv.includes('--array') ? JSON.parse(input).map(parse) : parse(input);
process.stdout.write(JSON.stringify(out));
