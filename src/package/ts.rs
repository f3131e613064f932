//! MPEG-2 transport stream (ISO/IEC 13818-1) for HLS media segments and LL-HLS parts
//! (RFC 8216bis §3.3.1 and §3.3.2), sans-IO.
//!
//! One rendition per stream: a single program whose elementary stream is either H.264 (Annex B,
//! ITU-T H.264) or AAC in ADTS (ISO/IEC 13818-7 §6.2 / ISO/IEC 14496-3 §1.A), plus a timed-ID3
//! stream as Apple's "Timed Metadata for HTTP Live Streaming" describes. Every call to
//! [`TsWriter::write`] starts with a PAT and a PMT so that each part can be parsed on its own
//! (RFC 8216bis §3.3.1: a segment must contain a PAT and a PMT). Continuity counters carry over
//! from one call to the next, so that consecutive parts concatenate into one valid stream.

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::Ticks;
use crate::media::avc;
use crate::package::fmp4::TrackParams;

/// Transport packet size (§2.4.3.2).
pub const PACKET_SIZE: usize = 188;
/// Program map PID announced by the PAT.
pub const PMT_PID: u16 = 0x1000;
/// PID of the one audio or video elementary stream; it is also the PCR PID.
pub const ES_PID: u16 = 0x100;
/// PID of the timed-ID3 metadata stream.
pub const ID3_PID: u16 = 0x102;

const PAT_PID: u16 = 0x0000;
const TRANSPORT_STREAM_ID: u16 = 1;
const PROGRAM_NUMBER: u16 = 1;

/// stream_type values (§2.4.4.9, Table 2-34).
const STREAM_TYPE_ADTS: u8 = 0x0F;
const STREAM_TYPE_H264: u8 = 0x1B;
/// Metadata carried in PES packets (§2.12.3, Table 2-34).
const STREAM_TYPE_METADATA_PES: u8 = 0x15;

/// stream_id values (§2.4.3.7, Table 2-22).
const STREAM_ID_PRIVATE_1: u8 = 0xBD;
const STREAM_ID_AUDIO: u8 = 0xC0;
const STREAM_ID_VIDEO: u8 = 0xE0;

/// table_id values (§2.4.4.4, Table 2-31).
const TABLE_ID_PAT: u8 = 0x00;
const TABLE_ID_PMT: u8 = 0x02;

/// PTS, DTS and PCR base are 33-bit counts of the 90 kHz clock (§2.4.3.7, §2.4.3.5).
const TIMESTAMP_MODULUS: i64 = 1 << 33;

/// Payload bytes of a transport packet after its 4-byte header.
const PACKET_PAYLOAD: usize = PACKET_SIZE - 4;

/// The registered format identifier of ID3 (Apple, Timed Metadata for HTTP Live Streaming §2.2).
const ID3_FORMAT_IDENTIFIER: [u8; 4] = *b"ID3 ";

/// metadata_pointer_descriptor (§2.6.58, descriptor_tag 37) for the program_info loop, with the
/// values of Apple's Timed Metadata for HTTP Live Streaming §2.3.2: metadata_application_format
/// 0xFFFF and metadata_format 0xFF (registered identifiers follow), both identifiers 'ID3 ',
/// metadata_service_id 0, no locator record, MPEG_carriage_flags 0 (same transport stream),
/// reserved bits set, then the program_number.
const METADATA_POINTER_DESCRIPTOR: [u8; 17] = {
    let [id0, id1, id2, id3] = ID3_FORMAT_IDENTIFIER;
    let [pn0, pn1] = PROGRAM_NUMBER.to_be_bytes();
    [0x25, 15, 0xFF, 0xFF, id0, id1, id2, id3, 0xFF, id0, id1, id2, id3, 0x00, 0x1F, pn0, pn1]
};

/// metadata_descriptor (§2.6.60, descriptor_tag 38) for the ID3 stream's ES_info loop, per the
/// same Apple section: the same format fields and metadata_service_id as the pointer, then
/// decoder_config_flags 000 (ID3 needs no decoder configuration), DSM-CC_flag 0, reserved bits
/// set.
const METADATA_DESCRIPTOR: [u8; 15] = {
    let [id0, id1, id2, id3] = ID3_FORMAT_IDENTIFIER;
    [0x26, 13, 0xFF, 0xFF, id0, id1, id2, id3, 0xFF, id0, id1, id2, id3, 0x00, 0x0F]
};

/// access_unit_delimiter_rbsp with primary_pic_type 7 (any slice type), ITU-T H.264 §7.3.2.4,
/// after a 4-byte start code (Annex B.1).
const ACCESS_UNIT_DELIMITER: [u8; 6] = [0, 0, 0, 1, 0x09, 0xF0];
const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_AUD: u8 = 9;

/// A PES packet longer than this cannot state its length (§2.4.3.7: PES_packet_length is 16
/// bits and counts what follows it).
const MAX_PES_PACKET_LENGTH: usize = 0xFFFF;

/// ADTS frame_length is 13 bits and includes the 7-byte header (ISO/IEC 13818-7 §6.2.2).
const ADTS_HEADER_LEN: usize = 7;
const MAX_ADTS_FRAME_LEN: usize = (1 << 13) - 1;

/// samplingFrequencyIndex table (ISO/IEC 14496-3 §1.6.3.4, Table 1.18).
const SAMPLING_FREQUENCIES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// One access unit on the 90 kHz clock.
#[derive(Debug, Clone)]
pub struct TsSample {
    pub pts: Ticks,
    pub dts: Ticks,
    pub keyframe: bool,
    /// H.264: length-prefixed NAL units (lengths as the avcC says, normally 4 bytes), parameter
    /// sets not in band. AAC: one raw frame, no ADTS header.
    pub data: Bytes,
}

/// Writes the transport stream of one rendition, part by part.
#[derive(Debug, Clone)]
pub struct TsWriter {
    es: Elementary,
    /// The PAT and PMT packets without their continuity counters, which [`TsWriter::write`] fills in.
    pat: [u8; PACKET_SIZE],
    pmt: [u8; PACKET_SIZE],
    cc: ContinuityCounters,
}

#[derive(Debug, Clone)]
enum Elementary {
    Video {
        /// Every SPS then every PPS of the avcC, each after a 4-byte start code.
        parameter_sets: Bytes,
        nal_length_size: usize,
    },
    Audio(Adts),
}

/// The fixed ADTS header fields (ISO/IEC 13818-7 §6.2.1) that come from the AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Adts {
    /// profile_ObjectType: audio object type − 1 (1 is AAC LC).
    profile: u8,
    sampling_frequency_index: u8,
    channel_configuration: u8,
}

/// continuity_counter of each PID (§2.4.3.3): 4 bits, incremented on every packet with payload.
#[derive(Debug, Clone, Copy, Default)]
struct ContinuityCounters {
    pat: u8,
    pmt: u8,
    es: u8,
    id3: u8,
}

impl ContinuityCounters {
    fn next(&mut self, pid: u16) -> u8 {
        let cc = match pid {
            PAT_PID => &mut self.pat,
            PMT_PID => &mut self.pmt,
            ID3_PID => &mut self.id3,
            _ => &mut self.es,
        };
        let now = *cc;
        *cc = (now + 1) & 0x0F;
        now
    }
}

/// The fields of a PES packet's header and of its first transport packet.
struct PesStart {
    pid: u16,
    stream_id: u8,
    pts: u64,
    dts: Option<u64>,
    /// random_access_indicator (§2.4.3.5): a decoder can start here.
    random_access: bool,
    /// PCR base, carried in the first packet's adaptation field.
    pcr: Option<u64>,
}

impl TsWriter {
    /// A writer for `track`. A malformed avcC or AudioSpecificConfig is logged and written as
    /// far as it goes (no parameter sets; ADTS fields from the track's sample rate and channels).
    pub fn new(track: &TrackParams) -> Self {
        let (es, stream_type) = match track {
            TrackParams::Video(v) => {
                let (parameter_sets, nal_length_size) = match avc::parse_avcc(&v.avcc) {
                    Ok(record) => {
                        let mut sets = BytesMut::new();
                        for nal in record.sps.iter().chain(&record.pps) {
                            sets.put_slice(&START_CODE);
                            sets.put_slice(nal);
                        }
                        (sets.freeze(), usize::from(record.length_size))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TS: avcC unreadable; keyframes go out without SPS/PPS");
                        (Bytes::new(), 4)
                    }
                };
                (Elementary::Video { parameter_sets, nal_length_size }, STREAM_TYPE_H264)
            }
            TrackParams::Audio(a) => {
                let adts = adts_from_asc(&a.asc).unwrap_or_else(|| {
                    tracing::warn!(
                        sample_rate = a.sample_rate,
                        channels = a.channels,
                        "TS: AudioSpecificConfig unreadable; ADTS headers say AAC LC at the track's rate"
                    );
                    Adts {
                        profile: 1,
                        sampling_frequency_index: sampling_frequency_index(a.sample_rate),
                        channel_configuration: a.channels.min(7),
                    }
                });
                (Elementary::Audio(adts), STREAM_TYPE_ADTS)
            }
        };
        TsWriter {
            es,
            pat: psi_packet(PAT_PID, &pat_section()),
            pmt: psi_packet(PMT_PID, &pmt_section(stream_type)),
            cc: ContinuityCounters::default(),
        }
    }

    /// The TS bytes of one part (or segment): PAT and PMT first (so every part can be parsed on
    /// its own), then one PES per sample in order, and one timed-ID3 PES per metadata tag (placed
    /// before the first sample whose pts ≥ the tag's pts, or at the end if none).
    ///
    /// Chunks: the PAT and PMT, then one chunk per PES packet, all views into one buffer.
    pub fn write(&mut self, samples: &[TsSample], metadata: &[(Ticks, Bytes)]) -> Vec<Bytes> {
        let mut buf = BytesMut::with_capacity(self.estimated_len(samples, metadata));
        let mut chunks = Vec::with_capacity(1 + samples.len() + metadata.len());

        for (pid, packet) in [(PAT_PID, self.pat), (PMT_PID, self.pmt)] {
            let cc = self.cc.next(pid);
            buf.put_slice(&packet[..3]);
            buf.put_u8(packet[3] | cc);
            buf.put_slice(&packet[4..]);
        }
        chunks.push(buf.split().freeze());

        // Stable sort: tags bound for the same place keep their order.
        let mut tags: Vec<(usize, &(Ticks, Bytes))> = metadata
            .iter()
            .map(|tag| (samples.iter().position(|s| s.pts >= tag.0).unwrap_or(samples.len()), tag))
            .collect();
        tags.sort_by_key(|&(before, _)| before);
        let mut tags = tags.into_iter().peekable();

        for (i, sample) in samples.iter().enumerate() {
            while let Some((_, (pts, tag))) = tags.next_if(|&(before, _)| before == i) {
                if self.write_id3(&mut buf, *pts, tag) {
                    chunks.push(buf.split().freeze());
                }
            }
            if self.write_sample(&mut buf, sample) {
                chunks.push(buf.split().freeze());
            }
        }
        for (_, (pts, tag)) in tags {
            if self.write_id3(&mut buf, *pts, tag) {
                chunks.push(buf.split().freeze());
            }
        }
        chunks
    }

    /// An upper bound on the bytes of a call, so that the output is one allocation.
    fn estimated_len(&self, samples: &[TsSample], metadata: &[(Ticks, Bytes)]) -> usize {
        // PES header (19) + AUD/ADTS + start codes or parameter sets, rounded up per packet.
        let extra = match &self.es {
            Elementary::Video { parameter_sets, .. } => ACCESS_UNIT_DELIMITER.len() + parameter_sets.len() + 19,
            Elementary::Audio(_) => ADTS_HEADER_LEN + 19,
        };
        let pes = |len: usize| (len / (PACKET_PAYLOAD - 8) + 2) * PACKET_SIZE;
        2 * PACKET_SIZE
            + samples.iter().map(|s| pes(s.data.len() + extra)).sum::<usize>()
            + metadata.iter().map(|(_, tag)| pes(tag.len() + 14)).sum::<usize>()
    }

    /// One PES packet of an access unit; false when nothing could be written.
    fn write_sample(&mut self, buf: &mut BytesMut, sample: &TsSample) -> bool {
        let pts = wrap(sample.pts);
        let dts = wrap(sample.dts);
        let start = PesStart {
            pid: ES_PID,
            stream_id: match self.es {
                Elementary::Video { .. } => STREAM_ID_VIDEO,
                Elementary::Audio(_) => STREAM_ID_AUDIO,
            },
            pts,
            dts: (dts != pts).then_some(dts),
            random_access: sample.keyframe,
            // The ES is the PCR PID, so every PES of it starts with a PCR: at most a frame apart,
            // well within the 0.1 s of §2.7.2. PCR base = dts: the access unit has fully arrived
            // by its decode time.
            pcr: Some(dts),
        };
        match &self.es {
            Elementary::Video { parameter_sets, nal_length_size } => {
                // Annex B (ITU-T H.264 §B.1): an access unit delimiter first, as ISO/IEC 13818-1
                // §2.14 requires of AVC in a transport stream; parameter sets before each IDR so
                // that each keyframe decodes on its own.
                let mut pieces: Vec<&[u8]> = Vec::with_capacity(2 + 2 * (sample.data.len() / 512 + 2));
                pieces.push(&ACCESS_UNIT_DELIMITER);
                if sample.keyframe && !parameter_sets.is_empty() {
                    pieces.push(parameter_sets);
                }
                let mut rest: &[u8] = &sample.data;
                while !rest.is_empty() {
                    let Some((len, tail)) = rest.split_at_checked(*nal_length_size) else {
                        tracing::warn!(pts = sample.pts, "TS: truncated NAL length in an H.264 sample; rest dropped");
                        break;
                    };
                    let len = len.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                    let Some((nal, tail)) = tail.split_at_checked(len) else {
                        tracing::warn!(pts = sample.pts, len, "TS: H.264 NAL unit overruns its sample; rest dropped");
                        break;
                    };
                    rest = tail;
                    // The delimiter is written above; an empty NAL unit is nothing to carry.
                    if nal.first().is_none_or(|&header| header & 0x1F == NAL_AUD) {
                        continue;
                    }
                    pieces.push(&START_CODE);
                    pieces.push(nal);
                }
                write_pes(&mut self.cc, buf, &start, &pieces);
                true
            }
            Elementary::Audio(adts) => {
                let Some(header) = adts.header(sample.data.len()) else {
                    tracing::warn!(
                        pts = sample.pts,
                        len = sample.data.len(),
                        "TS: AAC frame too long for an ADTS header; dropped"
                    );
                    return false;
                };
                write_pes(&mut self.cc, buf, &start, &[&header, &sample.data]);
                true
            }
        }
    }

    /// One timed-ID3 PES packet (Apple, Timed Metadata for HTTP Live Streaming §2.3.1: a PES on
    /// private_stream_1 with a PTS and data_alignment_indicator set, one whole ID3 tag per PES).
    fn write_id3(&mut self, buf: &mut BytesMut, pts: Ticks, tag: &[u8]) -> bool {
        if pes_header_len(false) - 6 + tag.len() > MAX_PES_PACKET_LENGTH {
            tracing::warn!(pts, len = tag.len(), "TS: ID3 tag too long for one PES packet; dropped");
            return false;
        }
        let start = PesStart {
            pid: ID3_PID,
            stream_id: STREAM_ID_PRIVATE_1,
            pts: wrap(pts),
            dts: None,
            random_access: false,
            pcr: None,
        };
        write_pes(&mut self.cc, buf, &start, &[tag]);
        true
    }
}

/// A PES packet (§2.4.3.6) whose payload is `pieces` in order, cut into transport packets;
/// the last packet is filled out with adaptation-field stuffing (§2.4.3.5).
fn write_pes(cc: &mut ContinuityCounters, buf: &mut BytesMut, start: &PesStart, pieces: &[&[u8]]) {
    let payload_len: usize = pieces.iter().map(|p| p.len()).sum();
    let header_len = pes_header_len(start.dts.is_some());
    // §2.4.3.7: 0 (unbounded) is allowed only for video in a transport stream.
    let packet_length = u16::try_from(header_len - 6 + payload_len).unwrap_or(0);
    debug_assert!(packet_length != 0 || start.stream_id == STREAM_ID_VIDEO);

    let mut header = [0u8; 19];
    header[..3].copy_from_slice(&[0, 0, 1]);
    header[3] = start.stream_id;
    header[4..6].copy_from_slice(&packet_length.to_be_bytes());
    // '10', PES_scrambling_control 00, PES_priority 0, data_alignment_indicator 1 (each PES
    // starts with an access unit or a whole ID3 tag), copyright 0, original_or_copy 0.
    header[6] = 0x84;
    if let Some(dts) = start.dts {
        header[7] = 0xC0; // PTS_DTS_flags '11'
        header[8] = 10;
        put_timestamp(&mut header[9..14], 0b0011, start.pts);
        put_timestamp(&mut header[14..19], 0b0001, dts);
    } else {
        header[7] = 0x80; // PTS_DTS_flags '10'
        header[8] = 5;
        put_timestamp(&mut header[9..14], 0b0010, start.pts);
    }

    let mut all: Vec<&[u8]> = Vec::with_capacity(1 + pieces.len());
    all.push(&header[..header_len]);
    all.extend_from_slice(pieces);
    let mut payload = Gather { pieces: &all, index: 0, offset: 0, remaining: header_len + payload_len };

    let mut first = true;
    while payload.remaining > 0 {
        let (flags, pcr) = match first {
            true => (if start.random_access { 0x40 } else { 0 }, start.pcr),
            false => (0, None),
        };
        let pcr_len = if pcr.is_some() { 6 } else { 0 };
        // adaptation_field_length + flags + PCR, when the packet needs any of them.
        let fields_len = if flags != 0 || pcr.is_some() { 2 + pcr_len } else { 0 };
        let room = PACKET_PAYLOAD - fields_len;
        let carried = payload.remaining.min(room);
        let stuffing = room - carried;
        let adaptation_len = fields_len + stuffing;

        buf.put_u8(0x47);
        buf.put_u16(if first { 0x4000 } else { 0 } | start.pid);
        // adaptation_field_control: '11' adaptation field then payload, '01' payload only.
        let control = if adaptation_len > 0 { 0x30 } else { 0x10 };
        buf.put_u8(control | cc.next(start.pid));
        if adaptation_len > 0 {
            // adaptation_field_length counts the bytes after itself; a single stuffing byte is
            // that length byte alone (§2.4.3.5).
            buf.put_u8((adaptation_len - 1) as u8);
            if adaptation_len > 1 {
                buf.put_u8(flags | if pcr.is_some() { 0x10 } else { 0 });
                if let Some(pcr) = pcr {
                    put_pcr(buf, pcr);
                }
                buf.put_bytes(0xFF, adaptation_len - 2 - pcr_len);
            }
        }
        payload.copy_to(buf, carried);
        first = false;
    }
}

/// Reads a sequence of byte slices as one.
struct Gather<'a> {
    pieces: &'a [&'a [u8]],
    index: usize,
    offset: usize,
    remaining: usize,
}

impl Gather<'_> {
    fn copy_to(&mut self, buf: &mut BytesMut, mut n: usize) {
        self.remaining -= n;
        while n > 0 {
            let piece = &self.pieces[self.index][self.offset..];
            let take = piece.len().min(n);
            buf.put_slice(&piece[..take]);
            n -= take;
            self.offset += take;
            if self.offset == self.pieces[self.index].len() {
                self.index += 1;
                self.offset = 0;
            }
        }
    }
}

impl Adts {
    /// The 7-byte adts_fixed_header + adts_variable_header (ISO/IEC 13818-7 §6.2.1) of a raw frame
    /// of `frame_len` bytes: MPEG-4 ID, no CRC, buffer fullness 0x7FF (variable rate), one raw
    /// data block. None when the frame is too long to describe.
    fn header(&self, frame_len: usize) -> Option<[u8; ADTS_HEADER_LEN]> {
        let len = frame_len + ADTS_HEADER_LEN;
        if len > MAX_ADTS_FRAME_LEN {
            return None;
        }
        let len = len as u16;
        Some([
            0xFF,
            0xF1, // syncword low nibble, ID 0 (MPEG-4), layer 00, protection_absent 1
            (self.profile << 6) | (self.sampling_frequency_index << 2) | ((self.channel_configuration >> 2) & 1),
            ((self.channel_configuration & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len & 7) as u8) << 5 | 0x1F,
            0xFC,
        ])
    }
}

/// The ADTS fields of an AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1). With explicit SBR/PS
/// signalling the ADTS header describes the AAC core (core sampling rate, inner object type), as
/// ADTS carries HE-AAC by implicit signalling (§1.6.5.2).
fn adts_from_asc(asc: &[u8]) -> Option<Adts> {
    let mut bits = Bits { data: asc, pos: 0 };
    let object_type = |bits: &mut Bits| match bits.read(5)? {
        31 => Some(32 + bits.read(6)?),
        aot => Some(aot),
    };
    let sampling_index = |bits: &mut Bits| match bits.read(4)? {
        0xF => Some(sampling_frequency_index(bits.read(24)?)),
        index => Some(index as u8),
    };
    let mut aot = object_type(&mut bits)?;
    let sampling_frequency_index = sampling_index(&mut bits)?;
    let channel_configuration = bits.read(4)? as u8;
    if aot == 5 || aot == 29 {
        sampling_index(&mut bits)?; // extensionSamplingFrequencyIndex
        aot = object_type(&mut bits)?;
    }
    // profile_ObjectType is 2 bits: AAC Main, LC, SSR, LTP (object types 1–4).
    if !(1..=4).contains(&aot) || sampling_frequency_index > 12 || channel_configuration > 7 {
        return None;
    }
    Some(Adts { profile: aot as u8 - 1, sampling_frequency_index, channel_configuration })
}

/// The samplingFrequencyIndex of a rate, or of the nearest tabled rate (ADTS cannot state an
/// explicit rate).
fn sampling_frequency_index(rate: u32) -> u8 {
    let nearest = SAMPLING_FREQUENCIES.iter().enumerate().min_by_key(|&(_, &f)| f.abs_diff(rate)).map(|(i, _)| i);
    nearest.unwrap_or(3) as u8
}

/// MSB-first bit reader.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u32) -> Option<u32> {
        let mut value = 0;
        for _ in 0..n {
            let byte = self.data.get(self.pos / 8)?;
            value = (value << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(value)
    }
}

/// Bytes of a PES header with PTS, and DTS when `with_dts` (§2.4.3.6).
fn pes_header_len(with_dts: bool) -> usize {
    if with_dts { 19 } else { 14 }
}

/// A timestamp on the 33-bit clock; Ticks before 0 or past 2^33 wrap around.
fn wrap(t: Ticks) -> u64 {
    t.rem_euclid(TIMESTAMP_MODULUS) as u64
}

/// A PTS or DTS field (§2.4.3.7): a 4-bit prefix, then the 33 bits in 3 + 15 + 15 with marker bits.
fn put_timestamp(out: &mut [u8], prefix: u8, ts: u64) {
    out[0] = (prefix << 4) | (((ts >> 30) & 0x07) as u8) << 1 | 1;
    out[1] = (ts >> 22) as u8;
    out[2] = (((ts >> 15) & 0x7F) as u8) << 1 | 1;
    out[3] = (ts >> 7) as u8;
    out[4] = ((ts & 0x7F) as u8) << 1 | 1;
}

/// program_clock_reference (§2.4.3.5): 33-bit base, 6 reserved bits, 9-bit extension (0).
fn put_pcr(buf: &mut BytesMut, base: u64) {
    buf.put_u32((base >> 1) as u32);
    buf.put_u8((((base & 1) as u8) << 7) | 0x7E);
    buf.put_u8(0);
}

/// A section with the long-form header (§2.4.4.3, §2.4.4.8): table_id, section_syntax_indicator
/// 1, section_length, the table id extension, version 0, current_next_indicator 1, section 0 of
/// 0, `body`, CRC_32.
fn long_section(table_id: u8, id_extension: u16, body: &[u8]) -> Vec<u8> {
    let section_length = 5 + body.len() + 4;
    let mut s = Vec::with_capacity(3 + section_length);
    s.push(table_id);
    s.extend_from_slice(&(0xB000 | section_length as u16).to_be_bytes());
    s.extend_from_slice(&id_extension.to_be_bytes());
    s.extend_from_slice(&[0xC1, 0x00, 0x00]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// program_association_section (§2.4.4.3): program 1 → PMT_PID.
fn pat_section() -> Vec<u8> {
    let mut body = Vec::with_capacity(4);
    body.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    body.extend_from_slice(&(0xE000 | PMT_PID).to_be_bytes());
    long_section(TABLE_ID_PAT, TRANSPORT_STREAM_ID, &body)
}

/// TS_program_map_section (§2.4.4.8): the ES on ES_PID (also the PCR PID) and the timed-ID3
/// stream on ID3_PID, described as Apple's Timed Metadata for HTTP Live Streaming §2.3.2 says.
fn pmt_section(es_stream_type: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&(0xE000 | ES_PID).to_be_bytes());
    body.extend_from_slice(&(0xF000 | METADATA_POINTER_DESCRIPTOR.len() as u16).to_be_bytes());
    body.extend_from_slice(&METADATA_POINTER_DESCRIPTOR);
    body.push(es_stream_type);
    body.extend_from_slice(&(0xE000 | ES_PID).to_be_bytes());
    body.extend_from_slice(&0xF000u16.to_be_bytes());
    body.push(STREAM_TYPE_METADATA_PES);
    body.extend_from_slice(&(0xE000 | ID3_PID).to_be_bytes());
    body.extend_from_slice(&(0xF000 | METADATA_DESCRIPTOR.len() as u16).to_be_bytes());
    body.extend_from_slice(&METADATA_DESCRIPTOR);
    long_section(TABLE_ID_PMT, PROGRAM_NUMBER, &body)
}

/// A transport packet carrying one whole section (§2.4.4.1: pointer_field 0, then the section,
/// then 0xFF fill), continuity_counter left 0.
fn psi_packet(pid: u16, section: &[u8]) -> [u8; PACKET_SIZE] {
    let mut p = [0xFF; PACKET_SIZE];
    p[0] = 0x47;
    p[1..3].copy_from_slice(&(0x4000 | pid).to_be_bytes());
    p[3] = 0x10;
    p[4] = 0;
    p[5..5 + section.len()].copy_from_slice(section);
    p
}

/// CRC_32 of §2.4.4.3 and Annex A: polynomial 0x04C11DB7, initial value 0xFFFFFFFF, MSB first,
/// no final inversion (so the CRC over a section including its CRC_32 is 0).
fn crc32_mpeg2(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04C1_1DB7 } else { crc << 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    data.iter().fold(0xFFFF_FFFF, |crc, &b| (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize])
}
