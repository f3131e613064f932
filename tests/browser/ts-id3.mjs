// Reads an MPEG-2 transport stream on stdin with mux.js (the TS demuxer video.js uses) and prints
// JSON: the PMT as mux.js understood it, every timed-ID3 tag (PTS, the whole tag in hex, its
// frames with TXXX description/value), and the PTS/DTS of every video and audio PES packet.
//
// Usage: node ts-id3.mjs < part.ts
import muxjs from 'mux.js';

const { TransportPacketStream, TransportParseStream, ElementaryStream, MetadataStream } = muxjs.mp2t;

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = new Uint8Array(Buffer.concat(chunks));

const packets = new TransportPacketStream();
const parse = new TransportParseStream();
const elementary = new ElementaryStream();
const metadata = new MetadataStream();
packets.pipe(parse).pipe(elementary).pipe(metadata);

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const out = { pmt: null, id3: [], video: [], audio: [], logs: [] };

parse.on('data', (event) => {
  if (event.type === 'pmt' && out.pmt === null) {
    const t = event.programMapTable;
    out.pmt = { video: t.video, audio: t.audio, timedMetadata: Object.keys(t['timed-metadata']).map(Number) };
  }
});
elementary.on('data', (event) => {
  if (event.type === 'video' || event.type === 'audio') {
    out[event.type].push({ pts: event.pts, dts: event.dts, bytes: event.data.byteLength });
  }
});
metadata.on('data', (tag) => {
  out.id3.push({
    pts: tag.pts,
    dts: tag.dts,
    data: hex(tag.data),
    frames: tag.frames.map((f) => ({ id: f.id, description: f.description, value: f.value })),
  });
});
for (const stream of [packets, parse, elementary, metadata]) {
  stream.on('log', (entry) => out.logs.push(entry));
}

packets.push(input);
packets.flush();
process.stdout.write(JSON.stringify(out) + '\n');
