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
use crate::media::avc::{LengthPrefixedNals, NalLengthError};
use crate::media::{aac, avc};
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
/// Metadata carried in PES packets (§2.12, Table 2-34).
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
                        sampling_frequency_index: aac::nearest_frequency_index(a.sample_rate),
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

    /// About the bytes of a call, rounded up, so that the output is normally one allocation (more
    /// start-code bytes than length bytes, with 1- or 2-byte NAL lengths, only cost a reallocation).
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
                for nal in LengthPrefixedNals::new(&sample.data, *nal_length_size) {
                    let nal = match nal {
                        Ok(nal) => nal,
                        Err(NalLengthError::CutShort) => {
                            tracing::warn!(
                                pts = sample.pts,
                                "TS: truncated NAL length in an H.264 sample; rest dropped"
                            );
                            break;
                        }
                        Err(NalLengthError::Overrun { len }) => {
                            tracing::warn!(
                                pts = sample.pts,
                                len,
                                "TS: H.264 NAL unit overruns its sample; rest dropped"
                            );
                            break;
                        }
                    };
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

    /// One timed-ID3 PES packet (Apple, Timed Metadata for HTTP Live Streaming §2: a PES on
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
    let core = aac::core_config(asc).ok()?;
    let sampling_frequency_index =
        core.sampling_frequency_index.unwrap_or_else(|| aac::nearest_frequency_index(core.sampling_frequency));
    let (aot, channel_configuration) = (core.object_type, core.channel_configuration);
    // profile_ObjectType is 2 bits: AAC Main, LC, SSR, LTP (object types 1–4).
    if !(1..=4).contains(&aot) || sampling_frequency_index > 12 || channel_configuration > 7 {
        return None;
    }
    Some(Adts { profile: aot - 1, sampling_frequency_index, channel_configuration })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use mp4_atom::{Codec, Encode};

    use super::*;
    use crate::media::{AudioParams, VideoParams};
    use crate::package::fixture::read_fixture;
    use crate::testutil;

    /// The PAT and PMT packets as they go out in the first call (continuity counters 0).
    const PAT_PACKET: &str = "474000100000b00d0001c100000001f0002ab104b2";
    const VIDEO_PMT_PACKET: &str = "475000100002b0370001c10000e100f011250fffff49443320ff49443320001f00011be100f000\
                                    15e102f00f260dffff49443320ff49443320000f514c7db2";
    const AUDIO_PMT_PACKET: &str = "475000100002b0370001c10000e100f011250fffff49443320ff49443320001f00010fe100f000\
                                    15e102f00f260dffff49443320ff49443320000f87f7d98b";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// A 188-byte packet: `head` then 0xFF fill.
    fn filled(head: &str) -> Vec<u8> {
        let mut p = unhex(head);
        p.resize(PACKET_SIZE, 0xFF);
        p
    }

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    /// x264's avcC for the 320x180 fixture is not needed here: a record with one small SPS and
    /// PPS is enough to see them placed.
    fn test_avcc() -> Bytes {
        Bytes::from_static(&[1, 0x64, 0, 0x0D, 0xFF, 0xE1, 0, 4, 0x67, 0x64, 0x00, 0x0D, 1, 0, 2, 0x68, 0xEE])
    }

    fn video_track(avcc: Bytes) -> TrackParams {
        TrackParams::Video(VideoParams { avcc, width: 320, height: 180, codec: "avc1.64000d".into() })
    }

    fn audio_track(asc: Bytes) -> TrackParams {
        TrackParams::Audio(AudioParams {
            asc,
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        })
    }

    /// Length-prefixed NAL units (4-byte lengths).
    fn nals(units: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        for u in units {
            v.extend_from_slice(&(u.len() as u32).to_be_bytes());
            v.extend_from_slice(u);
        }
        Bytes::from(v)
    }

    /// A minimal ID3v2.4 tag (ID3v2.4.0 structure §3.1, frames §4.2.6) with one TXXX frame: UTF-8,
    /// empty description, `value`.
    fn id3_txxx(value: &str) -> Bytes {
        let syncsafe =
            |n: usize| [(n >> 21) as u8 & 0x7F, (n >> 14) as u8 & 0x7F, (n >> 7) as u8 & 0x7F, n as u8 & 0x7F];
        let mut frame_body = vec![0x03, 0x00];
        frame_body.extend_from_slice(value.as_bytes());
        let mut frame = b"TXXX".to_vec();
        frame.extend_from_slice(&syncsafe(frame_body.len()));
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&frame_body);
        let mut tag = b"ID3\x04\x00\x00".to_vec();
        tag.extend_from_slice(&syncsafe(frame.len()));
        tag.extend_from_slice(&frame);
        Bytes::from(tag)
    }

    /// What a test needs to know of one transport packet.
    #[derive(Debug, Clone)]
    struct Packet {
        pid: u16,
        start: bool,
        cc: u8,
        /// The adaptation field after its length byte.
        adaptation: Option<Vec<u8>>,
        payload: Vec<u8>,
    }

    fn parse_packets(ts: &[u8]) -> Vec<Packet> {
        assert_eq!(ts.len() % PACKET_SIZE, 0, "whole packets");
        ts.chunks(PACKET_SIZE)
            .map(|p| {
                assert_eq!(p[0], 0x47, "sync byte");
                assert_eq!(p[1] & 0x80, 0, "transport_error_indicator");
                let control = (p[3] >> 4) & 3;
                assert!(control == 1 || control == 3, "every packet carries payload");
                let (adaptation, payload_at) = if control == 3 {
                    let len = usize::from(p[4]);
                    assert!(len <= 183);
                    (Some(p[5..5 + len].to_vec()), 5 + len)
                } else {
                    (None, 4)
                };
                assert!(payload_at < PACKET_SIZE, "payload present");
                Packet {
                    pid: u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]),
                    start: p[1] & 0x40 != 0,
                    cc: p[3] & 0x0F,
                    adaptation,
                    payload: p[payload_at..].to_vec(),
                }
            })
            .collect()
    }

    fn read_timestamp(b: &[u8]) -> u64 {
        assert_eq!(b[0] & 1, 1, "marker");
        assert_eq!(b[2] & 1, 1, "marker");
        assert_eq!(b[4] & 1, 1, "marker");
        (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1)
    }

    /// One reassembled PES packet and what its first transport packet said.
    #[derive(Debug)]
    struct Pes {
        pid: u16,
        stream_id: u8,
        packet_length: u16,
        data_alignment: bool,
        pts: u64,
        dts: Option<u64>,
        random_access: bool,
        pcr: Option<u64>,
        payload: Vec<u8>,
    }

    fn parse_pes(packets: &[Packet]) -> Vec<Pes> {
        let mut out: Vec<Pes> = Vec::new();
        let mut open: HashMap<u16, usize> = HashMap::new();
        for p in packets.iter().filter(|p| p.pid != PAT_PID && p.pid != PMT_PID) {
            if !p.start {
                let at = *open.get(&p.pid).expect("a continuation follows a start");
                out[at].payload.extend_from_slice(&p.payload);
                continue;
            }
            let h = &p.payload;
            assert_eq!(h[..3], [0, 0, 1], "packet_start_code_prefix");
            assert_eq!(h[6] & 0xC0, 0x80);
            let flags = h[7] >> 6;
            assert!(flags == 2 || flags == 3, "PTS present");
            let header_len = 9 + usize::from(h[8]);
            let af = p.adaptation.clone().unwrap_or_default();
            let pcr = (af.first().is_some_and(|f| f & 0x10 != 0)).then(|| {
                assert_eq!(af[5] & 0x7E, 0x7E, "PCR reserved bits");
                assert_eq!((af[5] & 1, af[6]), (0, 0), "PCR extension 0");
                u64::from(u32::from_be_bytes(af[1..5].try_into().unwrap())) << 1 | u64::from(af[5] >> 7)
            });
            open.insert(p.pid, out.len());
            out.push(Pes {
                pid: p.pid,
                stream_id: h[3],
                packet_length: u16::from_be_bytes([h[4], h[5]]),
                data_alignment: h[6] & 0x04 != 0,
                pts: read_timestamp(&h[9..14]),
                dts: (flags == 3).then(|| read_timestamp(&h[14..19])),
                random_access: af.first().is_some_and(|f| f & 0x40 != 0),
                pcr,
                payload: h[header_len..].to_vec(),
            });
        }
        for pes in &out {
            if pes.packet_length != 0 {
                let header_len = if pes.dts.is_some() { 19 } else { 14 };
                assert_eq!(usize::from(pes.packet_length), header_len - 6 + pes.payload.len(), "PES_packet_length");
            }
        }
        out
    }

    #[test]
    fn crc_matches_sections_ffmpeg_wrote() {
        // The PAT and an audio-only PMT as FFmpeg 5.1's mpegts muxer writes them, CRC_32 last.
        for section in ["00b00d0001c100000001f0002ab104b2", "02b0120001c10000e100f0000fe100f000b69bc0d9"] {
            let section = unhex(section);
            let (body, crc) = section.split_at(section.len() - 4);
            assert_eq!(crc32_mpeg2(body).to_be_bytes(), crc);
            assert_eq!(crc32_mpeg2(&section), 0, "a section with its CRC_32 checks to 0 (Annex A)");
        }
    }

    #[test]
    fn pat_and_pmt_are_exact() {
        for (track, pmt) in [
            (video_track(test_avcc()), VIDEO_PMT_PACKET),
            (audio_track(Bytes::from_static(&[0x11, 0x90])), AUDIO_PMT_PACKET),
        ] {
            let chunks = TsWriter::new(&track).write(&[], &[]);
            assert_eq!(chunks.len(), 1);
            let expected = [filled(PAT_PACKET), filled(pmt)].concat();
            assert_eq!(chunks[0][..], expected[..]);
            // Sections: after the 4-byte header and pointer_field, section_length + 3 bytes.
            for packet in chunks[0].chunks(PACKET_SIZE) {
                let section = &packet[5..];
                let len = 3 + (usize::from(section[1] & 0x0F) << 8 | usize::from(section[2]));
                assert_eq!(crc32_mpeg2(&section[..len]), 0, "CRC_32 of the section");
            }
        }
        // The descriptors on their own: metadata_pointer_descriptor (§2.6.58) and
        // metadata_descriptor (§2.6.60) as Apple's Timed Metadata for HLS §2.3.2 fills them.
        assert_eq!(METADATA_POINTER_DESCRIPTOR[..], unhex("250fffff49443320ff49443320001f0001")[..]);
        assert_eq!(METADATA_DESCRIPTOR[..], unhex("260dffff49443320ff49443320000f")[..]);
    }

    #[test]
    fn continuity_counters_run_on_across_calls() {
        let mut w = TsWriter::new(&video_track(test_avcc()));
        let mut ts = Vec::new();
        for call in 0..20i64 {
            let samples: Vec<TsSample> = (0..3)
                .map(|i| {
                    let n = call * 3 + i;
                    let slice = vec![0x41u8; 100 + (n as usize * 37) % 400];
                    TsSample { pts: n * 3000, dts: n * 3000, keyframe: i == 0, data: nals(&[&slice]) }
                })
                .collect();
            let tags = if call % 3 == 0 { vec![(call * 9000, id3_txxx("x"))] } else { vec![] };
            ts.extend(concat(&w.write(&samples, &tags)));
        }
        let mut last: HashMap<u16, u8> = HashMap::new();
        let mut counts: HashMap<u16, usize> = HashMap::new();
        for p in parse_packets(&ts) {
            if let Some(prev) = last.insert(p.pid, p.cc) {
                assert_eq!(p.cc, (prev + 1) & 0x0F, "PID {:#x}: continuity_counter", p.pid);
            } else {
                assert_eq!(p.cc, 0, "PID {:#x} starts at 0", p.pid);
            }
            *counts.entry(p.pid).or_default() += 1;
        }
        assert_eq!(counts[&PAT_PID], 20);
        assert_eq!(counts[&PMT_PID], 20);
        assert_eq!(counts[&ID3_PID], 7);
        assert!(counts[&ES_PID] > 60);
        assert_eq!(last[&PAT_PID], 19 % 16, "the 20th PAT");
    }

    #[test]
    fn video_pes_carries_annex_b_with_timestamps_pcr_and_stuffing() {
        let mut w = TsWriter::new(&video_track(test_avcc()));
        let idr = [0x65u8; 300];
        let sei = [0x06u8, 0x05, 0x01, 0x80];
        let p_slice = [0x41u8; 170];
        let wrap_at = 1i64 << 33;
        let samples = [
            // A B-frame stream starting before 0 on the decode timeline.
            TsSample { pts: 3000, dts: -3000, keyframe: true, data: nals(&[&[0x09, 0xF0], &sei, &idr]) },
            TsSample { pts: 9000, dts: 0, keyframe: false, data: nals(&[&p_slice]) },
            // Past 2^33 the clock wraps; pts = dts leaves DTS out.
            TsSample { pts: wrap_at + 6000, dts: wrap_at + 6000, keyframe: false, data: nals(&[&p_slice[..1]]) },
        ];
        let chunks = w.write(&samples, &[]);
        assert_eq!(chunks.len(), 4, "PSI, then one chunk per PES");
        for c in &chunks {
            assert_eq!(c.len() % PACKET_SIZE, 0);
        }
        let packets = parse_packets(&concat(&chunks));
        let pes = parse_pes(&packets);
        assert_eq!(pes.len(), 3);

        let annexb = |units: &[&[u8]]| units.iter().flat_map(|u| [&[0, 0, 0, 1][..], u].concat()).collect::<Vec<u8>>();
        let aud: &[u8] = &[0x09, 0xF0];
        let (sps, pps): (&[u8], &[u8]) = (&[0x67, 0x64, 0x00, 0x0D], &[0x68, 0xEE]);
        assert_eq!(pes[0].payload, annexb(&[aud, sps, pps, &sei, &idr]), "AUD, SPS, PPS, then the sample's NALs");
        assert_eq!(pes[1].payload, annexb(&[aud, &p_slice]), "no parameter sets before a non-IDR");
        assert_eq!(pes[2].payload, annexb(&[aud, &p_slice[..1]]));

        assert_eq!((pes[0].pts, pes[0].dts), (3000, Some((wrap_at - 3000) as u64)));
        assert_eq!((pes[1].pts, pes[1].dts), (9000, Some(0)));
        assert_eq!((pes[2].pts, pes[2].dts), (6000, None));
        assert_eq!(pes.iter().map(|p| p.pcr).collect::<Vec<_>>(), [Some((wrap_at - 3000) as u64), Some(0), Some(6000)]);
        assert_eq!(pes.iter().map(|p| p.random_access).collect::<Vec<_>>(), [true, false, false]);
        for p in &pes {
            assert_eq!((p.pid, p.stream_id), (ES_PID, STREAM_ID_VIDEO));
            assert!(p.data_alignment);
        }

        // Stuffing sits in the adaptation field of each PES's last packet; a packet in the middle
        // has none. The 1-byte NAL's PES fits one packet with PCR and stuffing.
        let es: Vec<&Packet> = packets.iter().filter(|p| p.pid == ES_PID).collect();
        for (i, p) in es.iter().enumerate() {
            let last_of_pes = es.get(i + 1).is_none_or(|n| n.start);
            if !p.start && !last_of_pes {
                assert!(p.adaptation.is_none(), "no adaptation field mid-PES");
            }
            if let Some(af) = &p.adaptation
                && !p.start
            {
                assert!(last_of_pes);
                assert!(af.is_empty() || (af[0] == 0 && af[1..].iter().all(|&b| b == 0xFF)), "{af:?}");
            }
        }
        let last = es.last().unwrap();
        assert!(last.start);
        assert_eq!(last.adaptation.as_ref().unwrap().len(), 183 - 14 - 11, "flags, PCR, then stuffing");
    }

    #[test]
    fn large_video_pes_is_unbounded_and_stuffing_of_one_byte_works() {
        let mut w = TsWriter::new(&video_track(test_avcc()));
        let big = vec![0x41u8; 70_000];
        let chunks = w.write(&[TsSample { pts: 0, dts: 0, keyframe: false, data: nals(&[&big]) }], &[]);
        let pes = parse_pes(&parse_packets(&concat(&chunks)));
        assert_eq!(pes[0].packet_length, 0, "PES_packet_length 0 past 65535 bytes (§2.4.3.7)");
        assert_eq!(pes[0].payload.len(), 6 + 4 + big.len());

        // Every payload length around the packet boundary: the last packet's stuffing is 0, 1,
        // 2… bytes, and the reassembled payload is exact.
        for len in 150..400 {
            let tag = Bytes::from(vec![0xAB; len]);
            let chunks = w.write(&[], &[(90_000, tag.clone())]);
            let pes = parse_pes(&parse_packets(&concat(&chunks)));
            assert_eq!(pes.len(), 1);
            assert_eq!(pes[0].payload, tag[..], "len {len}");
        }
    }

    #[test]
    fn adts_headers_come_from_the_audio_specific_config() {
        // AAC LC, 48 kHz (index 3), stereo: 00010 0011 0010 000.
        let lc = adts_from_asc(&[0x11, 0x90]).expect("ASC");
        assert_eq!(lc, Adts { profile: 1, sampling_frequency_index: 3, channel_configuration: 2 });
        // frame_length 107 = 0b000_0110_1011; buffer fullness 0x7FF.
        assert_eq!(lc.header(100), Some([0xFF, 0xF1, 0x4C, 0x80, 0x0D, 0x7F, 0xFC]));
        assert_eq!(lc.header(MAX_ADTS_FRAME_LEN - 7 + 1), None);
        // HE-AAC, explicit signalling: object type 5, core 24 kHz (6), stereo, extension 48 kHz,
        // then AAC LC. ADTS describes the core.
        let he = adts_from_asc(&[0x2B, 0x11, 0x88, 0x00]).expect("ASC");
        assert_eq!(he, Adts { profile: 1, sampling_frequency_index: 6, channel_configuration: 2 });
        assert_eq!(adts_from_asc(&[0x11]), None);

        let mut w = TsWriter::new(&audio_track(Bytes::from_static(&[0x11, 0x90])));
        let frame = Bytes::from(vec![0x21u8; 300]);
        let samples: Vec<TsSample> =
            (0..3).map(|i| TsSample { pts: i * 1920, dts: i * 1920, keyframe: true, data: frame.clone() }).collect();
        let pes = parse_pes(&parse_packets(&concat(&w.write(&samples, &[]))));
        assert_eq!(pes.len(), 3);
        for (i, p) in pes.iter().enumerate() {
            assert_eq!((p.pid, p.stream_id), (ES_PID, STREAM_ID_AUDIO));
            assert_eq!((p.pts, p.dts, p.pcr), (i as u64 * 1920, None, Some(i as u64 * 1920)));
            assert!(p.random_access && p.data_alignment);
            assert_eq!(p.payload[..7], lc.header(300).unwrap());
            assert_eq!(p.payload[7..], frame[..]);
        }
    }

    #[test]
    fn id3_tags_go_before_the_first_sample_at_or_after_them() {
        let mut w = TsWriter::new(&audio_track(Bytes::from_static(&[0x11, 0x90])));
        let samples: Vec<TsSample> = (0..4)
            .map(|i| TsSample { pts: i * 1920, dts: i * 1920, keyframe: true, data: Bytes::from_static(&[0x21; 10]) })
            .collect();
        let (a, b, c, d) = (id3_txxx("a"), id3_txxx("b"), id3_txxx("c"), id3_txxx("d"));
        // Out of order on purpose: d is past the last sample, b and c share a place (kept in order).
        let tags = [(100_000, d.clone()), (1920, a.clone()), (2000, b.clone()), (3000, c.clone())];
        let chunks = w.write(&samples, &tags);
        assert_eq!(chunks.len(), 1 + 4 + 4);
        let pes = parse_pes(&parse_packets(&concat(&chunks)));
        let order: Vec<(u16, u64)> = pes.iter().map(|p| (p.pid, p.pts)).collect();
        assert_eq!(
            order,
            [
                (ES_PID, 0),
                (ID3_PID, 1920),
                (ES_PID, 1920),
                (ID3_PID, 2000),
                (ID3_PID, 3000),
                (ES_PID, 3840),
                (ES_PID, 5760),
                (ID3_PID, 100_000)
            ]
        );
        let id3: Vec<&Pes> = pes.iter().filter(|p| p.pid == ID3_PID).collect();
        for (p, tag) in id3.iter().zip([&a, &b, &c, &d]) {
            assert_eq!(p.payload, tag[..]);
            assert_eq!((p.stream_id, p.dts, p.pcr, p.random_access), (STREAM_ID_PRIVATE_1, None, None, false));
            assert!(p.data_alignment, "Apple's Timed Metadata for HLS: data_alignment_indicator 1");
        }
    }

    /// The video fixture as a track and 90 kHz samples.
    fn video_fixture() -> (TrackParams, Vec<TsSample>) {
        // x264, 320x180, 30 fps, 2 s, an IDR every 15 frames, 2 B-frames, 90 kHz timescale.
        let (codec, timescale, samples) = read_fixture(include_bytes!("testdata/h264_320x180_30fps_2s.mp4"));
        let Codec::Avc1(avc1) = codec else { panic!("avc1 expected") };
        assert_eq!((timescale, samples.len()), (90_000, 60));
        let mut record = Vec::new();
        avc1.avcc.encode(&mut record).expect("avcC");
        let samples =
            samples.into_iter().map(|(dts, pts, keyframe, data)| TsSample { pts, dts, keyframe, data }).collect();
        (video_track(Bytes::from(record.split_off(8))), samples)
    }

    /// The audio fixture as a track and 90 kHz samples.
    fn audio_fixture() -> (TrackParams, Vec<TsSample>) {
        let (codec, timescale, samples) = read_fixture(include_bytes!("testdata/aac_48k_stereo_2s.mp4"));
        let Codec::Mp4a(mp4a) = codec else { panic!("mp4a expected") };
        assert_eq!(timescale, 48_000);
        let asc = mp4a.esds.es_desc.dec_config.dec_specific.expect("ASC").raw;
        let samples = samples
            .into_iter()
            .map(|(dts, _, _, data)| {
                let t = dts * 90_000 / 48_000;
                TsSample { pts: t, dts: t, keyframe: true, data }
            })
            .collect();
        (audio_track(Bytes::from(asc)), samples)
    }

    /// Parts of `per_part` samples each from one writer, concatenated; `tags` name their part.
    fn write_parts(
        track: &TrackParams,
        samples: &[TsSample],
        per_part: usize,
        tags: &[(usize, Ticks, Bytes)],
    ) -> Vec<u8> {
        let mut w = TsWriter::new(track);
        let mut out = Vec::new();
        for (i, part) in samples.chunks(per_part).enumerate() {
            let here: Vec<(Ticks, Bytes)> =
                tags.iter().filter(|(p, _, _)| *p == i).map(|(_, pts, tag)| (*pts, tag.clone())).collect();
            out.extend(concat(&w.write(part, &here)));
        }
        out
    }

    /// The streams ffprobe reports (JSON, so that a program's copy of each is not counted
    /// again) and what it wrote to stderr.
    fn ffprobe(input: &[u8], args: &[&str]) -> (Vec<serde_json::Value>, String) {
        let (out, err) = testutil::ffprobe(input, &[args, &["-of", "json"]].concat());
        let json: serde_json::Value = serde_json::from_str(&out).expect("ffprobe JSON");
        (json["streams"].as_array().cloned().unwrap_or_default(), err)
    }

    fn mux_js(input: &[u8]) -> serde_json::Value {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        assert!(dir.join("node_modules/mux.js").exists(), "run scripts/setup.sh first (npm package mux.js is missing)");
        let script = dir.join("ts-id3.mjs");
        let (out, err) = testutil::run_tool("node", &[script.to_str().expect("path")], input);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ts-id3.mjs printed no JSON ({e}): {out}{err}"))
    }

    #[test]
    fn ffprobe_reads_video_parts() {
        let (track, samples) = video_fixture();
        // Parts of 4 pictures (not aligned with the 15-picture GOPs), one tag on the way.
        let ts = write_parts(&track, &samples, 4, &[(2, 30_000, id3_txxx("mid"))]);
        let (streams, err) = ffprobe(
            &ts,
            &["-count_frames", "-show_entries", "stream=codec_name,codec_tag_string,nb_read_frames,width,height"],
        );
        assert!(err.is_empty(), "ffprobe complained: {err}");
        assert_eq!(streams.len(), 2, "{streams:?}");
        let video = &streams[0];
        assert_eq!(
            (&video["codec_name"], &video["width"], &video["height"], &video["nb_read_frames"]),
            (&"h264".into(), &320.into(), &180.into(), &"60".into()),
        );
        assert_eq!((&streams[1]["codec_name"], &streams[1]["codec_tag_string"]), (&"timed_id3".into(), &"ID3 ".into()));
    }

    #[test]
    fn ffprobe_reads_audio_parts() {
        let (track, samples) = audio_fixture();
        let ts = write_parts(&track, &samples, 10, &[]);
        let (streams, err) = ffprobe(
            &ts,
            &[
                "-count_frames",
                "-select_streams",
                "a",
                "-show_entries",
                "stream=codec_name,profile,sample_rate,channels,nb_read_frames",
            ],
        );
        assert!(err.is_empty(), "ffprobe complained: {err}");
        assert_eq!(streams.len(), 1, "{streams:?}");
        let a = &streams[0];
        assert_eq!(
            (&a["codec_name"], &a["profile"], &a["sample_rate"], &a["channels"], &a["nb_read_frames"]),
            (&"aac".into(), &"LC".into(), &"48000".into(), &2.into(), &samples.len().to_string().into()),
        );
    }

    #[test]
    fn mux_js_reads_id3_and_timing() {
        let (track, samples) = video_fixture();
        let tag = id3_txxx("{\"event\":\"ad-break\",\"id\":7}");
        let mut w = TsWriter::new(&track);
        let mut ts = Vec::new();
        // Two parts; the tag belongs to the second and lands before its first sample at or after 45 000.
        ts.extend(concat(&w.write(&samples[..10], &[])));
        ts.extend(concat(&w.write(&samples[10..20], &[(45_000, tag.clone())])));
        let json = mux_js(&ts);

        assert_eq!(json["pmt"]["video"], ES_PID);
        assert_eq!(json["pmt"]["timedMetadata"], serde_json::json!([ID3_PID]));
        let id3 = json["id3"].as_array().expect("id3");
        assert_eq!(id3.len(), 1, "{json}");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id3[0]["data"], hex, "the tag exactly");
        assert_eq!(id3[0]["pts"], 45_000);
        assert_eq!(id3[0]["frames"][0]["id"], "TXXX");
        assert_eq!(id3[0]["frames"][0]["description"], "");
        assert_eq!(id3[0]["frames"][0]["value"], "{\"event\":\"ad-break\",\"id\":7}");

        let video = json["video"].as_array().expect("video");
        let timing: Vec<(i64, i64)> =
            video.iter().map(|v| (v["pts"].as_i64().expect("pts"), v["dts"].as_i64().expect("dts"))).collect();
        let expected: Vec<(i64, i64)> = samples[..20].iter().map(|s| (s.pts, s.dts)).collect();
        assert_eq!(timing, expected);
        assert!(json["logs"].as_array().expect("logs").is_empty(), "mux.js logged: {}", json["logs"]);

        let (track, samples) = audio_fixture();
        let json = mux_js(&write_parts(&track, &samples[..12], 5, &[]));
        assert_eq!(json["pmt"]["audio"], ES_PID);
        let audio: Vec<i64> =
            json["audio"].as_array().expect("audio").iter().map(|a| a["pts"].as_i64().unwrap()).collect();
        assert_eq!(audio, samples[..12].iter().map(|s| s.pts).collect::<Vec<_>>());
    }
}
