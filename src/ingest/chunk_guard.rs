//! The bounds rml_rtmp does not keep, checked on the chunk stream before it sees a byte
//! (sans-IO, so fuzzed and tested without sockets).
//!
//! rml_rtmp would buffer up to the 16 MiB a chunk header may announce, and rml_amf0 parses AMF0
//! objects recursively, so a few kilobytes of nested objects would overflow a worker thread's
//! stack and abort the whole daemon. [`ChunkGuard`] follows the chunk layer (RTMP 1.0 §5.3:
//! basic and message headers, extended timestamps, Set Chunk Size) far enough to refuse
//! oversized or interleaved messages, too many chunk streams or commands, and deep AMF0, and it
//! picks out timed text (`onTextData`) for the channel's timed metadata.

use std::collections::HashMap;

use bytes::Bytes;

use crate::config::DEFAULT_MAX_MESSAGE_BEFORE_PUBLISH;

/// Largest audio or video message accepted. An H.264 IDR picture of a 4K stream at a high bitrate
/// is a few megabytes; the protocol allows 16 MiB.
const MAX_MEDIA_MESSAGE: usize = 8 * 1024 * 1024;
/// Largest message of any other type (commands, metadata, control). Real ones are a few hundred bytes.
const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Deepest AMF0 nesting accepted; `connect` and `onMetaData` use one or two levels.
const MAX_AMF_DEPTH: usize = 16;
/// Chunk streams a peer may use; encoders use fewer than ten.
const MAX_CHUNK_STREAMS: usize = 64;
/// Commands a connection may send. A publisher sends about ten; rml_rtmp keeps state for some
/// (every `createStream` adds a stream to a map it never shrinks), so an endless supply is refused.
const MAX_COMMANDS: u32 = 1000;

/// Why [`ChunkGuard`] refused the chunk stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkViolation {
    #[error("chunk on stream {csid} has a compressed header but the stream had no earlier chunk")]
    NoPreviousChunk { csid: u32 },
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    #[error("chunk on stream {csid} (header type {fmt}) inside a message still arriving on stream {current}")]
    Interleaved { csid: u32, fmt: u8, current: u32 },
    #[error("message of type {type_id} announces {length} bytes, over the {limit}-byte limit")]
    MessageTooLarge { type_id: u8, length: usize, limit: usize },
    #[error(
        "message of type {type_id} announces {length} bytes before the publish was accepted, over rtmp.max_message_before_publish ({limit})"
    )]
    TooLargeBeforePublish { type_id: u8, length: usize, limit: usize },
    #[error(
        "chunk on stream {csid} starts a message with an extended timestamp delta of {delta}, which fits the 24-bit field"
    )]
    SmallExtendedDelta { csid: u32, delta: u32 },
    #[error("set chunk size {0} is out of range")]
    BadChunkSize(u32),
    #[error("AMF0 values nested deeper than {MAX_AMF_DEPTH} levels in a message of type {type_id}")]
    TooDeep { type_id: u8 },
    #[error("more than {MAX_COMMANDS} commands on one connection")]
    TooManyCommands,
    #[error(
        "a message of type {type_id} with {values} AMF0 values, which rml_rtmp cannot take (a {what} needs 3 or more)"
    )]
    TooFewValues { type_id: u8, values: usize, what: &'static str },
}

/// Follows the chunk stream from the client (RTMP spec §5.3) just far enough to refuse what
/// rml_rtmp cannot take safely: oversized messages, deeply nested AMF0, and chunks of one message
/// interleaved with another's (rml_rtmp keeps one reassembly buffer and underflows on those).
///
/// It frames chunks exactly as rml_rtmp's deserializer does (the same header rules, the peer's
/// chunk size from its Set Chunk Size messages), so on a well-formed stream it agrees with it.
/// Payload bytes are copied only for message types whose content matters here, and those are at
/// most `MAX_CONTROL_MESSAGE` long.
#[derive(Debug)]
pub struct ChunkGuard {
    /// The peer's chunk size (RTMP spec §5.4.1; 128 until it says otherwise).
    chunk_size: usize,
    /// The last header seen on each chunk stream, for header compression.
    streams: HashMap<u32, StreamHeader>,
    /// A chunk header being received (at most 3 + 11 + 4 bytes).
    header: Vec<u8>,
    /// The message being reassembled.
    message: Option<PartialMessage>,
    /// Payload bytes left in the current chunk; 0 while a header is expected.
    chunk_left: usize,
    /// Command messages seen so far.
    commands: u32,
    /// The size limit of every message until the publish is accepted (`rtmp.max_message_before_publish`);
    /// `None` from then on.
    before_publish: Option<usize>,
    /// Complete AMF0 data messages that may carry timed text (`onTextData`, `onCuePoint`), which
    /// rml_rtmp drops; taken by the connection after each read.
    timed_text: Vec<Vec<u8>>,
}

/// AMF0 data messages with timed text kept between two reads; an encoder sends a few a second.
const MAX_PENDING_TIMED_TEXT: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
struct StreamHeader {
    timestamp_field: u32,
    length: usize,
    type_id: u8,
}

#[derive(Debug)]
struct PartialMessage {
    csid: u32,
    type_id: u8,
    length: usize,
    received: usize,
    /// The payload, for the types that are inspected.
    body: Option<Vec<u8>>,
}

/// A chunk header decoded against the previous header of its chunk stream.
struct ChunkHeader {
    fmt: u8,
    csid: u32,
    stream: StreamHeader,
    /// The Extended Timestamp field, when the header has one.
    extended: Option<u32>,
}

const SET_CHUNK_SIZE: u8 = 1;
const AMF3_DATA: u8 = 15;
const AMF3_COMMAND: u8 = 17;
const AMF0_DATA: u8 = 18;
pub(super) const AMF0_COMMAND: u8 = 20;
/// The largest chunk size RTMP allows (31 bits, RTMP spec §5.4.1).
const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// A 24-bit timestamp field with this value means a 32-bit extended timestamp follows.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;

impl Default for ChunkGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkGuard {
    /// A guard for a new connection, whose messages are held to
    /// [`DEFAULT_MAX_MESSAGE_BEFORE_PUBLISH`] bytes until [`ChunkGuard::publishing`].
    pub fn new() -> Self {
        Self::with_limit_before_publish(DEFAULT_MAX_MESSAGE_BEFORE_PUBLISH)
    }

    /// A guard whose messages are held to `limit` bytes until [`ChunkGuard::publishing`]: an
    /// unauthenticated client has no use for a large one, and each costs its size in buffers.
    pub fn with_limit_before_publish(limit: usize) -> Self {
        Self {
            before_publish: Some(limit),
            chunk_size: 128,
            streams: HashMap::new(),
            header: Vec::new(),
            message: None,
            chunk_left: 0,
            commands: 0,
            timed_text: Vec::new(),
        }
    }

    /// The publish was accepted: media messages may now be as large as media gets.
    pub fn publishing(&mut self) {
        self.before_publish = None;
    }

    /// Follows `input`, the next bytes of the chunk stream.
    pub fn check(&mut self, mut input: &[u8]) -> Result<(), ChunkViolation> {
        while let Some((&first, rest)) = input.split_first() {
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(input.len());
                let (payload, rest) = input.split_at(n);
                input = rest;
                self.chunk_left -= n;
                let Some(message) = self.message.as_mut() else { continue };
                if let Some(body) = message.body.as_mut() {
                    body.extend_from_slice(payload);
                }
                message.received += n;
                if self.chunk_left == 0 && message.received >= message.length {
                    self.complete()?;
                }
                continue;
            }
            // Headers are at most 18 bytes: taking them a byte at a time keeps partial headers simple.
            self.header.push(first);
            input = rest;
            if let Some(header) = self.parse_header()? {
                self.header.clear();
                self.begin_chunk(header)?;
            }
        }
        Ok(())
    }

    /// Decodes the header in `self.header` once it is complete (RTMP spec §5.3.1).
    fn parse_header(&self) -> Result<Option<ChunkHeader>, ChunkViolation> {
        let b = &self.header;
        let Some(&first) = b.first() else { return Ok(None) };
        let fmt = first >> 6;
        let (csid, basic) = match first & 0x3F {
            0 => match b.get(1) {
                Some(&x) => (u32::from(x) + 64, 2),
                None => return Ok(None),
            },
            1 => match (b.get(1), b.get(2)) {
                (Some(&lo), Some(&hi)) => (u32::from(hi) * 256 + u32::from(lo) + 64, 3),
                _ => return Ok(None),
            },
            x => (u32::from(x), 1),
        };
        let message_header = match fmt {
            0 => 11,
            1 => 7,
            2 => 3,
            _ => 0,
        };
        let Some(mh) = b.get(basic..basic + message_header) else { return Ok(None) };
        let previous = self.streams.get(&csid).copied();
        let previous = match (fmt, previous) {
            (0, p) => p.unwrap_or_default(),
            (_, Some(p)) => p,
            (_, None) => return Err(ChunkViolation::NoPreviousChunk { csid }),
        };
        let u24 = |s: &[u8]| (u32::from(s[0]) << 16) | (u32::from(s[1]) << 8) | u32::from(s[2]);
        let timestamp_field = if fmt == 3 { previous.timestamp_field } else { u24(&mh[0..3]) };
        let (length, type_id) =
            if fmt <= 1 { (u24(&mh[3..6]) as usize, mh[6]) } else { (previous.length, previous.type_id) };
        let extended = if timestamp_field >= EXTENDED_TIMESTAMP { 4 } else { 0 };
        let end = basic + message_header;
        if b.len() < end + extended {
            return Ok(None);
        }
        let extended = (extended > 0).then(|| u32::from_be_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]));
        Ok(Some(ChunkHeader { fmt, csid, stream: StreamHeader { timestamp_field, length, type_id }, extended }))
    }

    fn begin_chunk(&mut self, header: ChunkHeader) -> Result<(), ChunkViolation> {
        if !self.streams.contains_key(&header.csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkViolation::TooManyChunkStreams);
        }
        self.streams.insert(header.csid, header.stream);
        if let Some(message) = &self.message {
            // A message continues only with type 3 chunks on its own chunk stream.
            if message.csid != header.csid || header.fmt != 3 {
                return Err(ChunkViolation::Interleaved { csid: header.csid, fmt: header.fmt, current: message.csid });
            }
            self.chunk_left = (message.length - message.received).min(self.chunk_size);
            return Ok(());
        }
        // RTMP 1.0 §5.3.1.3: the extended field carries what the 24-bit field cannot, so a delta
        // in it (any header but type 0) is 0xFFFFFF or more. rml_rtmp subtracts 0xFFFFFF from it
        // on a message's first chunk, which overflows below that.
        if header.fmt != 0
            && let Some(delta) = header.extended.filter(|&d| d < EXTENDED_TIMESTAMP)
        {
            return Err(ChunkViolation::SmallExtendedDelta { csid: header.csid, delta });
        }
        let StreamHeader { length, type_id, .. } = header.stream;
        let by_type = if matches!(type_id, 8 | 9) { MAX_MEDIA_MESSAGE } else { MAX_CONTROL_MESSAGE };
        if length > by_type {
            return Err(ChunkViolation::MessageTooLarge { type_id, length, limit: by_type });
        }
        if let Some(limit) = self.before_publish
            && length > limit
        {
            return Err(ChunkViolation::TooLargeBeforePublish { type_id, length, limit });
        }
        let inspected = matches!(type_id, SET_CHUNK_SIZE | AMF3_DATA | AMF3_COMMAND | AMF0_DATA | AMF0_COMMAND);
        self.message = Some(PartialMessage {
            csid: header.csid,
            type_id,
            length,
            received: 0,
            body: inspected.then(|| Vec::with_capacity(length)),
        });
        self.chunk_left = length.min(self.chunk_size);
        if length == 0 {
            self.complete()?;
        }
        Ok(())
    }

    /// A message is complete: act on the ones that change framing or feed rml_amf0.
    fn complete(&mut self) -> Result<(), ChunkViolation> {
        let Some(message) = self.message.take() else { return Ok(()) };
        let body = message.body.unwrap_or_default();
        match message.type_id {
            SET_CHUNK_SIZE => {
                // A short body is rml_rtmp's error to report; the chunk size is then unchanged.
                if let Some(s) = body.get(..4) {
                    let size = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
                    if size == 0 || size > MAX_CHUNK_SIZE {
                        return Err(ChunkViolation::BadChunkSize(size));
                    }
                    self.chunk_size = size as usize;
                }
            }
            AMF0_DATA | AMF0_COMMAND | AMF3_DATA | AMF3_COMMAND => {
                if matches!(message.type_id, AMF0_COMMAND | AMF3_COMMAND) {
                    self.commands += 1;
                    if self.commands > MAX_COMMANDS {
                        return Err(ChunkViolation::TooManyCommands);
                    }
                }
                // rml_rtmp reads AMF3 commands as AMF0 after an optional leading 0 byte.
                let amf = match (message.type_id, body.split_first()) {
                    (AMF3_COMMAND, Some((0, rest))) => rest,
                    _ => &body[..],
                };
                if amf0_depth(amf) > MAX_AMF_DEPTH {
                    return Err(ChunkViolation::TooDeep { type_id: message.type_id });
                }
                short_of_values(message.type_id, amf)?;
                if message.type_id == AMF0_DATA
                    && carries_timed_text(amf)
                    && self.timed_text.len() < MAX_PENDING_TIMED_TEXT
                {
                    self.timed_text.push(body);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// rml_rtmp 0.8 indexes into what it parses without checking: a command takes its name,
/// transaction id and command object as the first three values (`drain(..3)` panics on fewer,
/// an empty message included), and `@setDataFrame` takes the two values after it (`data[0]`,
/// `data.remove(1)`). Such messages are refused here, parsed as rml_amf0 parses them (the depth
/// is bounded first, so the parse cannot overflow the stack); one rml_amf0 refuses is its error.
fn short_of_values(type_id: u8, amf: &[u8]) -> Result<(), ChunkViolation> {
    let Ok(values) = rml_amf0::deserialize(&mut std::io::Cursor::new(amf)) else { return Ok(()) };
    let what = match type_id {
        AMF0_COMMAND | AMF3_COMMAND => "command",
        _ => match values.first() {
            Some(rml_amf0::Amf0Value::Utf8String(name)) if name == "@setDataFrame" => "@setDataFrame",
            _ => return Ok(()),
        },
    };
    if values.len() < 3 {
        return Err(ChunkViolation::TooFewValues { type_id, values: values.len(), what });
    }
    Ok(())
}

impl ChunkGuard {
    /// The timed-text data messages completed since the last call.
    pub fn take_timed_text(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.timed_text)
    }
}

/// Whether an AMF0 data message starts with `onTextData` or `onCuePoint` (possibly after
/// `@setDataFrame`), the FLV script data events that carry timed text and cue points.
fn carries_timed_text(amf: &[u8]) -> bool {
    let name = |b: &[u8]| -> Option<(String, usize)> {
        // AMF0 string marker 0x02, 16-bit length, bytes (AMF0 spec §2.4).
        let (&0x02, rest) = b.split_first()? else { return None };
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let s = rest.get(2..2 + len)?;
        Some((String::from_utf8_lossy(s).into_owned(), 3 + len))
    };
    match name(amf) {
        Some((n, used)) if n == "@setDataFrame" => {
            amf.get(used..).and_then(name).is_some_and(|(n, _)| n == "onTextData" || n == "onCuePoint")
        }
        Some((n, _)) => n == "onTextData" || n == "onCuePoint",
        None => false,
    }
}

/// The payload of an `onTextData`/`onCuePoint` message as timed metadata: its object as JSON,
/// e.g. `{"text":"SAVE20"}` (depth already bounded by the chunk guard). `None` for anything else.
pub fn timed_text_payload(amf: &[u8]) -> Option<Bytes> {
    use rml_amf0::Amf0Value;
    let mut values = rml_amf0::deserialize(&mut std::io::Cursor::new(amf)).ok()?.into_iter();
    let mut first = values.next()?;
    if matches!(&first, Amf0Value::Utf8String(s) if s == "@setDataFrame") {
        first = values.next()?;
    }
    let Amf0Value::Utf8String(name) = first else { return None };
    if name != "onTextData" && name != "onCuePoint" {
        return None;
    }
    fn json(v: Amf0Value) -> serde_json::Value {
        match v {
            Amf0Value::Number(n) => serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into),
            Amf0Value::Boolean(b) => b.into(),
            Amf0Value::Utf8String(s) => s.into(),
            // Keys in a stable order, so the same message always gives the same bytes.
            Amf0Value::Object(m) => serde_json::Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, json(v)))
                    .collect::<std::collections::BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
            ),
            Amf0Value::StrictArray(a) => a.into_iter().map(json).collect(),
            Amf0Value::Null | Amf0Value::Undefined => serde_json::Value::Null,
        }
    }
    let body = json(values.next()?);
    serde_json::to_vec(&body).ok().map(Bytes::from)
}

/// How deep rml_amf0 would recurse parsing `data` (AMF0 spec §2), following its grammar and
/// stopping where it would stop with an error. Iterative, and it gives up just past the limit.
fn amf0_depth(data: &[u8]) -> usize {
    const NUMBER: u8 = 0x00;
    const BOOLEAN: u8 = 0x01;
    const STRING: u8 = 0x02;
    const OBJECT: u8 = 0x03;
    const NULL: u8 = 0x05;
    const UNDEFINED: u8 = 0x06;
    const ECMA_ARRAY: u8 = 0x08;
    const OBJECT_END: u8 = 0x09;
    const STRICT_ARRAY: u8 = 0x0A;

    enum Frame {
        Object,
        Array(u32),
    }

    struct Reader<'a> {
        data: &'a [u8],
        pos: usize,
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
            self.pos += n;
            Some(s)
        }
        fn u8(&mut self) -> Option<u8> {
            self.take(1).map(|s| s[0])
        }
        fn u16(&mut self) -> Option<u16> {
            self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
        }
        fn u32(&mut self) -> Option<u32> {
            self.take(4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        }
        /// rml_amf0 reads strings with a plain `read`, which stops short without error.
        fn skip_up_to(&mut self, n: usize) {
            self.pos = self.pos.saturating_add(n).min(self.data.len());
        }
    }

    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    let mut deepest = 0;
    loop {
        let marker = match stack.last_mut() {
            None => match r.u8() {
                None | Some(OBJECT_END) => return deepest,
                Some(m) => m,
            },
            Some(Frame::Array(left)) => {
                if *left == 0 {
                    stack.pop();
                    continue;
                }
                *left -= 1;
                match r.u8() {
                    None => return deepest,
                    Some(OBJECT_END) => {
                        stack.pop();
                        continue;
                    }
                    Some(m) => m,
                }
            }
            Some(Frame::Object) => {
                let Some(label) = r.u16() else { return deepest };
                if label == 0 {
                    match r.u8() {
                        Some(OBJECT_END) => {
                            stack.pop();
                            continue;
                        }
                        _ => return deepest,
                    }
                }
                r.skip_up_to(usize::from(label));
                match r.u8() {
                    None | Some(OBJECT_END) => return deepest,
                    Some(m) => m,
                }
            }
        };
        match marker {
            NUMBER => {
                if r.take(8).is_none() {
                    return deepest;
                }
            }
            BOOLEAN => {
                if r.take(1).is_none() {
                    return deepest;
                }
            }
            NULL | UNDEFINED => {}
            STRING => match r.u16() {
                Some(n) => r.skip_up_to(usize::from(n)),
                None => return deepest,
            },
            OBJECT => stack.push(Frame::Object),
            ECMA_ARRAY => {
                if r.u32().is_none() {
                    return deepest;
                }
                stack.push(Frame::Object);
            }
            STRICT_ARRAY => match r.u32() {
                Some(n) => stack.push(Frame::Array(n)),
                None => return deepest,
            },
            _ => return deepest,
        }
        deepest = deepest.max(stack.len());
        if deepest > MAX_AMF_DEPTH {
            return deepest;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Splits one message into chunks: a type 0 header, then type 3 continuations.
    pub(crate) fn chunks(csid: u8, type_id: u8, payload: &[u8], chunk_size: usize) -> Vec<u8> {
        assert!((2..64).contains(&csid));
        let len = payload.len() as u32;
        let mut out = vec![csid, 0, 0, 0, (len >> 16) as u8, (len >> 8) as u8, len as u8, type_id, 1, 0, 0, 0];
        for (i, part) in payload.chunks(chunk_size.max(1)).enumerate() {
            if i > 0 {
                out.push(0xC0 | csid);
            }
            out.extend_from_slice(part);
        }
        out
    }

    pub(crate) fn amf_string(s: &str) -> Vec<u8> {
        let mut v = vec![0x02, 0, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    pub(crate) fn amf_number(n: f64) -> Vec<u8> {
        let mut v = vec![0x00];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    /// A `connect`-like command whose command object nests `depth` objects.
    pub(crate) fn nested_command(depth: usize) -> Vec<u8> {
        let mut v = amf_string("connect");
        v.extend(amf_number(1.0));
        v.push(0x03);
        for _ in 1..depth {
            v.extend_from_slice(&[0, 1, b'a', 0x03]);
        }
        for _ in 0..depth {
            v.extend_from_slice(&[0, 0, 0x09]);
        }
        v
    }

    #[test]
    fn rtmp_guard_follows_chunk_size_changes_and_split_messages() {
        let mut g = ChunkGuard::new();
        let mut stream = chunks(2, SET_CHUNK_SIZE, &4096u32.to_be_bytes(), 128);
        stream.extend(chunks(3, AMF0_COMMAND, &nested_command(3), 4096));
        // A 10 kB video message in 4096-byte chunks, then a shallow command.
        stream.extend(chunks(6, 9, &[0x17; 10_000], 4096));
        stream.extend(chunks(3, AMF0_COMMAND, &nested_command(2), 4096));
        assert_eq!(g.check(&stream), Ok(()));
        assert_eq!(g.chunk_size, 4096);
        assert!(g.message.is_none() && g.chunk_left == 0);

        // Byte by byte gives the same answer.
        let mut g = ChunkGuard::new();
        for b in &stream {
            assert_eq!(g.check(std::slice::from_ref(b)), Ok(()));
        }
        assert!(g.message.is_none());
    }

    #[test]
    fn rtmp_guard_refuses_deep_amf_even_when_split_over_chunks() {
        let mut g = ChunkGuard::new();
        let deep = nested_command(1000);
        assert_eq!(g.check(&chunks(3, AMF0_COMMAND, &deep, 128)), Err(ChunkViolation::TooDeep { type_id: 20 }));
        let mut g = ChunkGuard::new();
        assert_eq!(g.check(&chunks(3, AMF0_DATA, &nested_command(MAX_AMF_DEPTH), 128)), Ok(()));
        let mut g = ChunkGuard::new();
        let arrays: Vec<u8> = std::iter::repeat_n([0x0A, 0, 0, 0, 1], 100).flatten().collect();
        assert_eq!(g.check(&chunks(3, AMF0_DATA, &arrays, 128)), Err(ChunkViolation::TooDeep { type_id: 18 }));
    }

    #[test]
    fn rtmp_guard_refuses_oversized_and_interleaved_messages() {
        let mut g = ChunkGuard::new();
        // A command announcing 1 MiB is refused at its header, before any payload is buffered.
        let header = [3, 0, 0, 0, 0x10, 0, 0, AMF0_COMMAND, 0, 0, 0, 0];
        assert_eq!(
            g.check(&header),
            Err(ChunkViolation::MessageTooLarge { type_id: 20, length: 1 << 20, limit: MAX_CONTROL_MESSAGE })
        );
        let mut g = ChunkGuard::new();
        let header = [6, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0];
        assert!(matches!(g.check(&header), Err(ChunkViolation::MessageTooLarge { type_id: 9, .. })));

        // Before the publish is accepted every message is small; after it, media may be large.
        let video = [6, 0, 0, 0, 0x01, 0x00, 0x00, 9, 1, 0, 0, 0];
        let mut g = ChunkGuard::with_limit_before_publish(4096);
        assert_eq!(
            g.check(&video),
            Err(ChunkViolation::TooLargeBeforePublish { type_id: 9, length: 65536, limit: 4096 })
        );
        let mut g = ChunkGuard::with_limit_before_publish(4096);
        g.publishing();
        assert_eq!(g.check(&video), Ok(()));
        let mut g = ChunkGuard::with_limit_before_publish(4096);
        g.publishing();
        let command = [3, 0, 0, 0, 0x01, 0x00, 0x01, AMF0_COMMAND, 0, 0, 0, 0];
        assert!(matches!(g.check(&command), Err(ChunkViolation::MessageTooLarge { limit: MAX_CONTROL_MESSAGE, .. })));

        // A second chunk stream starting mid-message.
        let mut g = ChunkGuard::new();
        let video = chunks(6, 9, &[0u8; 300], 128);
        let mut stream = video[..12 + 128].to_vec();
        stream.extend(chunks(4, 8, &[0xAF, 1, 2], 128));
        assert_eq!(g.check(&stream), Err(ChunkViolation::Interleaved { csid: 4, fmt: 0, current: 6 }));

        // A compressed header on a stream never seen.
        let mut g = ChunkGuard::new();
        assert_eq!(g.check(&[0xC5]), Err(ChunkViolation::NoPreviousChunk { csid: 5 }));
        // A chunk size of zero would stall rml_rtmp's framing.
        let mut g = ChunkGuard::new();
        assert_eq!(g.check(&chunks(2, SET_CHUNK_SIZE, &[0, 0, 0, 0], 128)), Err(ChunkViolation::BadChunkSize(0)));
    }

    #[test]
    fn rtmp_guard_handles_extended_timestamps_and_long_chunk_stream_ids() {
        let mut g = ChunkGuard::new();
        // Type 0 on chunk stream 64 + 300 (3-byte basic header) with an extended timestamp, the
        // payload split so the type 3 continuation also carries the extended timestamp.
        let payload = [7u8; 200];
        let mut s = vec![0x01, (300 & 0xFF) as u8, (300 >> 8) as u8, 0xFF, 0xFF, 0xFF, 0, 0, 200, 9, 1, 0, 0, 0];
        s.extend_from_slice(&[0x01, 0x00, 0x00, 0x00]);
        s.extend_from_slice(&payload[..128]);
        s.extend_from_slice(&[0xC1, (300 & 0xFF) as u8, (300 >> 8) as u8, 0x01, 0x00, 0x00, 0x00]);
        s.extend_from_slice(&payload[128..]);
        assert_eq!(g.check(&s), Ok(()));
        assert!(g.message.is_none() && g.chunk_left == 0);

        // A type 1 header starting the next message with an extended delta that needs 25 bits
        // passes; one whose extended delta would have fitted the 24-bit field does not.
        let next = |delta: u32| {
            let mut h = vec![0x41, (300 & 0xFF) as u8, (300 >> 8) as u8, 0xFF, 0xFF, 0xFF, 0, 0, 1, 9];
            h.extend_from_slice(&delta.to_be_bytes());
            h.push(0x17);
            h
        };
        assert_eq!(g.check(&next(0x0100_0000)), Ok(()));
        assert_eq!(g.check(&next(40)), Err(ChunkViolation::SmallExtendedDelta { csid: 364, delta: 40 }));
    }

    #[test]
    fn rtmp_guard_limits_commands_per_connection() {
        let mut g = ChunkGuard::new();
        let mut create = amf_string("createStream");
        create.extend(amf_number(2.0));
        create.push(0x05);
        let one = chunks(3, AMF0_COMMAND, &create, 128);
        for _ in 0..MAX_COMMANDS {
            assert_eq!(g.check(&one), Ok(()));
        }
        assert_eq!(g.check(&one), Err(ChunkViolation::TooManyCommands));
    }

    #[test]
    fn rtmp_guard_limits_chunk_streams() {
        let mut g = ChunkGuard::new();
        let mut s = Vec::new();
        for i in 0..=MAX_CHUNK_STREAMS as u32 {
            s.extend_from_slice(&[0x00, i as u8, 0, 0, 0, 0, 0, 4, 8, 1, 0, 0, 0]);
            s.extend_from_slice(&[0xAF, 1, 2, 3]);
        }
        assert_eq!(g.check(&s), Err(ChunkViolation::TooManyChunkStreams));
    }

    #[test]
    fn rtmp_on_text_data_becomes_a_json_payload() {
        let mut amf = amf_string("@setDataFrame");
        amf.extend(amf_string("onTextData"));
        // An object {text: "SAVE20", n: 2}: marker 0x03, (name, value) pairs, end 00 00 09.
        amf.push(0x03);
        for (k, v) in [("text", amf_string("SAVE20")), ("n", amf_number(2.0))] {
            amf.extend_from_slice(&(k.len() as u16).to_be_bytes());
            amf.extend_from_slice(k.as_bytes());
            amf.extend(v);
        }
        amf.extend_from_slice(&[0, 0, 9]);
        assert!(carries_timed_text(&amf));
        assert_eq!(timed_text_payload(&amf).as_deref(), Some(&br#"{"n":2.0,"text":"SAVE20"}"#[..]));
        // The guard hands complete messages over.
        let mut g = ChunkGuard::new();
        assert_eq!(g.check(&chunks(4, AMF0_DATA, &amf, 128)), Ok(()));
        assert_eq!(g.take_timed_text(), vec![amf.clone()]);
        assert!(g.take_timed_text().is_empty());
        // onMetaData is rml_rtmp's business, not timed text.
        let mut meta = amf_string("@setDataFrame");
        meta.extend(amf_string("onMetaData"));
        assert!(!carries_timed_text(&meta));
        assert_eq!(timed_text_payload(&meta), None);
        assert_eq!(timed_text_payload(b"\x02\x00"), None);
    }
}
