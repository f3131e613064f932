//! FLV tag bodies as RTMP carries them: video (FLV spec v10.1 §E.4.3.1, AVCVIDEOPACKET) and audio
//! (§E.4.2.1, AACAUDIODATA), plus the enhanced-RTMP FourCC headers (E-RTMP v1/v2, "Enhanced Video"
//! and "Enhanced Audio"): H.264 (`avc1`) and AAC (`mp4a`) are read from them, every other codec is
//! refused by name.

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::aac::{self, AacError};
use crate::media::avc::{self, AvcError, LengthPrefixedNals, NalLengthError};
use crate::media::{AudioParams, VideoParams};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    #[error("tag body truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    #[error("AVC: {0}")]
    Avc(#[from] AvcError),
    #[error("AAC: {0}")]
    Aac(#[from] AacError),
    #[error("video frame before any AVC sequence header")]
    NoSequenceHeader,
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// What one video tag body carries.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoTag {
    /// An AVC sequence header (AVCDecoderConfigurationRecord).
    Params(VideoParams),
    /// One access unit, NAL units with 4-byte length prefixes (whatever the source's length size).
    Frame {
        /// FrameType 1 (key frame) and an IDR picture among the NAL units: a frame a decoder can
        /// start from. FrameType 1 alone also marks open-GOP I pictures (recovery points), which
        /// reference pictures before them.
        keyframe: bool,
        /// Composition time offset in milliseconds (pts = dts + this).
        composition_ms: i32,
        data: Bytes,
    },
    /// AVC end of sequence, a video command frame, enhanced-RTMP metadata, or a frame that carries
    /// no NAL unit once AUD and filler are dropped: nothing to forward.
    Nothing,
}

/// What one audio tag body carries.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioTag {
    /// An AAC sequence header (AudioSpecificConfig).
    Params(AudioParams),
    /// One raw AAC frame.
    Frame(Bytes),
    /// An empty tag (sent for silence), or enhanced-RTMP SequenceEnd or MultichannelConfig:
    /// nothing to forward.
    Nothing,
}

/// Parses the video tags of one publish; remembers the NAL length size of the latest sequence header.
#[derive(Debug, Default)]
pub struct VideoDemuxer {
    length_size: Option<u8>,
}

/// FrameType (§E.4.3.1; E-RTMP VideoFrameType).
const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_COMMAND: u8 = 5;
/// Legacy CodecID 7 and its AVCPacketType values (§E.4.3.1).
const CODEC_ID_AVC: u8 = 7;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;
/// The IsExHeader bit of the first video byte (E-RTMP "Enhanced Video").
const IS_EX_HEADER: u8 = 0x80;
/// E-RTMP VideoPacketType.
const VIDEO_SEQUENCE_START: u8 = 0;
const VIDEO_CODED_FRAMES: u8 = 1;
const VIDEO_SEQUENCE_END: u8 = 2;
const VIDEO_CODED_FRAMES_X: u8 = 3;
const VIDEO_METADATA: u8 = 4;
const VIDEO_MULTITRACK: u8 = 6;
const VIDEO_MOD_EX: u8 = 7;
/// SoundFormat 10 (AAC) and 9 (E-RTMP ExHeader), §E.4.2.1 and E-RTMP "Enhanced Audio".
const SOUND_FORMAT_AAC: u8 = 10;
const SOUND_FORMAT_EX_HEADER: u8 = 9;
const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;
/// E-RTMP AudioPacketType.
const AUDIO_SEQUENCE_START: u8 = 0;
const AUDIO_CODED_FRAMES: u8 = 1;
const AUDIO_SEQUENCE_END: u8 = 2;
const AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
const AUDIO_MULTITRACK: u8 = 5;
const AUDIO_MOD_EX: u8 = 7;
/// H.264 NAL unit types (ITU-T H.264 Table 7-1) dropped from frames: access unit delimiters carry
/// nothing an fMP4/TS packager keeps, and filler data only pads a CBR bitrate.
const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;
/// Coded slice of an IDR picture (ITU-T H.264 Table 7-1).
const NAL_IDR: u8 = 5;

/// The `N` bytes at `*pos`, advancing past them.
fn take<const N: usize>(body: &[u8], pos: &mut usize, what: &'static str) -> Result<[u8; N], FlvError> {
    let bytes = body.get(*pos..).and_then(|rest| rest.first_chunk::<N>()).ok_or(FlvError::Truncated(what))?;
    *pos += N;
    Ok(*bytes)
}

/// SI24, a big-endian two's complement 24-bit integer (§E.4.3.1 CompositionTime).
fn si24([high, middle, low]: [u8; 3]) -> i32 {
    i32::from_be_bytes([high, middle, low, 0]) >> 8
}

/// Steps over E-RTMP ModEx blocks ("Enhanced Video"/"Enhanced Audio": size UI8 + 1, or UI16 + 1
/// when the first reads 256, the data, then a byte of ModExType | next PacketType) and returns
/// the first packet type that is not ModEx. The only ModEx type defined, TimestampOffsetNano,
/// refines the timestamp below the millisecond, which nothing downstream can use.
fn skip_mod_ex(body: &[u8], pos: &mut usize, mut packet_type: u8, mod_ex: u8) -> Result<u8, FlvError> {
    while packet_type == mod_ex {
        let [size] = take::<1>(body, pos, "ModEx size")?;
        let mut size = usize::from(size) + 1;
        if size == 256 {
            size = usize::from(u16::from_be_bytes(take::<2>(body, pos, "ModEx 16-bit size")?)) + 1;
        }
        *pos = pos.checked_add(size).filter(|&end| end <= body.len()).ok_or(FlvError::Truncated("ModEx data"))?;
        let [next] = take::<1>(body, pos, "packet type after ModEx")?;
        packet_type = next & 0x0f;
    }
    Ok(packet_type)
}

/// A FourCC for a message: the four characters when printable, else hex.
fn fourcc_text(fourcc: [u8; 4]) -> String {
    if fourcc.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        fourcc.iter().map(|&b| char::from(b)).collect()
    } else {
        format!("0x{}", fourcc.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

fn legacy_video_codec_name(codec_id: u8) -> String {
    match codec_id {
        2 => "Sorenson H.263 (FLV codec id 2)".to_owned(),
        3 => "Screen Video (FLV codec id 3)".to_owned(),
        4 => "On2 VP6 (FLV codec id 4)".to_owned(),
        5 => "On2 VP6 with alpha channel (FLV codec id 5)".to_owned(),
        6 => "Screen Video v2 (FLV codec id 6)".to_owned(),
        12 => "HEVC (non-standard FLV codec id 12; use enhanced RTMP 'hvc1')".to_owned(),
        13 => "AV1 (non-standard FLV codec id 13; use enhanced RTMP 'av01')".to_owned(),
        other => format!("unknown video (FLV codec id {other})"),
    }
}

fn video_fourcc_name(fourcc: [u8; 4]) -> String {
    let name = match &fourcc {
        b"hvc1" => "HEVC",
        b"av01" => "AV1",
        b"vp09" => "VP9",
        b"vp08" => "VP8",
        b"vvc1" => "VVC",
        _ => "unknown video",
    };
    format!("{name} (enhanced RTMP '{}')", fourcc_text(fourcc))
}

fn legacy_sound_format_name(sound_format: u8) -> String {
    let name = match sound_format {
        0 => "linear PCM, platform endian",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM, little endian",
        4 => "Nellymoser 16 kHz mono",
        5 => "Nellymoser 8 kHz mono",
        6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        11 => "Speex",
        14 => "MP3 8 kHz",
        15 => "device-specific sound",
        _ => "reserved sound format",
    };
    format!("{name} (FLV SoundFormat {sound_format})")
}

fn audio_fourcc_name(fourcc: [u8; 4]) -> String {
    let name = match &fourcc {
        b"Opus" => "Opus",
        b"fLaC" => "FLAC",
        b"ac-3" => "AC-3",
        b"ec-3" => "E-AC-3",
        b".mp3" => "MP3",
        _ => "unknown audio",
    };
    format!("{name} (enhanced RTMP audio '{}')", fourcc_text(fourcc))
}

/// The NAL units of an AVC sample of this tag, as FLV errors.
fn nal_units(data: &[u8], length_size: usize) -> impl Iterator<Item = Result<&[u8], FlvError>> {
    LengthPrefixedNals::new(data, length_size).map(|nal| {
        nal.map_err(|e| match e {
            NalLengthError::CutShort => FlvError::Malformed("NAL unit length prefix cut short"),
            NalLengthError::Overrun { .. } => FlvError::Malformed("NAL unit length runs past the end of the tag"),
        })
    })
}

fn is_forwarded(nal: &[u8]) -> bool {
    nal.first().is_some_and(|header| !matches!(header & 0x1f, NAL_AUD | NAL_FILLER))
}

fn is_idr(nal: &[u8]) -> bool {
    nal.first().is_some_and(|header| header & 0x1f == NAL_IDR)
}

/// An access unit as it is forwarded.
struct AccessUnit {
    data: Bytes,
    /// Whether it holds a slice of an IDR picture.
    idr: bool,
}

/// An AVC sample with `length_size`-byte NAL lengths as one with 4-byte lengths, without AUD and
/// filler NAL units; `None` when nothing is left. Returns `data` itself when nothing changes.
fn to_four_byte_lengths(data: Bytes, length_size: u8) -> Result<Option<AccessUnit>, FlvError> {
    let length_size = usize::from(length_size);
    let (mut total, mut kept, mut kept_bytes, mut idr) = (0usize, 0usize, 0usize, false);
    for nal in nal_units(&data, length_size) {
        let nal = nal?;
        total += 1;
        if is_forwarded(nal) {
            kept += 1;
            kept_bytes += nal.len();
            idr |= is_idr(nal);
        }
    }
    if kept == 0 {
        return Ok(None);
    }
    if length_size == 4 && kept == total {
        return Ok(Some(AccessUnit { data, idr }));
    }
    let mut out = BytesMut::with_capacity(kept_bytes + 4 * kept);
    for nal in nal_units(&data, length_size) {
        let nal = nal?;
        if is_forwarded(nal) {
            // At most 4 bytes of length were read, so the length fits a u32.
            out.put_u32(nal.len() as u32);
            out.put_slice(nal);
        }
    }
    Ok(Some(AccessUnit { data: out.freeze(), idr }))
}

impl VideoDemuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one video tag body: legacy AVC (§E.4.3.1) or enhanced RTMP with FourCC `avc1`.
    /// Frames come back with 4-byte NAL lengths and without AUD and filler NAL units.
    pub fn parse(&mut self, body: Bytes) -> Result<VideoTag, FlvError> {
        let &first = body.first().ok_or(FlvError::Truncated("empty video tag"))?;
        if first & IS_EX_HEADER != 0 {
            return self.parse_enhanced(body, first);
        }
        let frame_type = first >> 4;
        let codec_id = first & 0x0f;
        if frame_type == FRAME_TYPE_COMMAND {
            return Ok(VideoTag::Nothing);
        }
        if codec_id != CODEC_ID_AVC {
            return Err(FlvError::UnsupportedCodec(legacy_video_codec_name(codec_id)));
        }
        let mut pos = 1;
        let [packet_type] = take::<1>(&body, &mut pos, "AVCPacketType")?;
        let composition_ms = si24(take::<3>(&body, &mut pos, "CompositionTime")?);
        match packet_type {
            AVC_SEQUENCE_HEADER => self.sequence_start(body.slice(pos..)),
            AVC_NALU => self.coded_frames(frame_type == FRAME_TYPE_KEY, composition_ms, body.slice(pos..)),
            AVC_END_OF_SEQUENCE => Ok(VideoTag::Nothing),
            _ => Err(FlvError::Malformed("AVCPacketType is not 0, 1 or 2")),
        }
    }

    /// ExVideoTagHeader and ExVideoTagBody (E-RTMP "Enhanced Video").
    fn parse_enhanced(&mut self, body: Bytes, first: u8) -> Result<VideoTag, FlvError> {
        let frame_type = (first >> 4) & 0x07;
        let mut pos = 1;
        let packet_type = skip_mod_ex(&body, &mut pos, first & 0x0f, VIDEO_MOD_EX)?;
        if packet_type != VIDEO_METADATA && frame_type == FRAME_TYPE_COMMAND {
            return Ok(VideoTag::Nothing);
        }
        if packet_type == VIDEO_MULTITRACK {
            return Err(FlvError::UnsupportedCodec("multitrack video (enhanced RTMP)".to_owned()));
        }
        let fourcc = take::<4>(&body, &mut pos, "video FourCC")?;
        if &fourcc != b"avc1" {
            return Err(FlvError::UnsupportedCodec(video_fourcc_name(fourcc)));
        }
        let key_frame_type = frame_type == FRAME_TYPE_KEY;
        match packet_type {
            VIDEO_SEQUENCE_START => self.sequence_start(body.slice(pos..)),
            VIDEO_CODED_FRAMES => {
                let composition_ms = si24(take::<3>(&body, &mut pos, "CompositionTime")?);
                self.coded_frames(key_frame_type, composition_ms, body.slice(pos..))
            }
            VIDEO_CODED_FRAMES_X => self.coded_frames(key_frame_type, 0, body.slice(pos..)),
            // Metadata carries AMF colour information (HDR), nothing an H.264 ladder uses.
            VIDEO_SEQUENCE_END | VIDEO_METADATA => Ok(VideoTag::Nothing),
            _ => Err(FlvError::Malformed("enhanced RTMP VideoPacketType not defined for 'avc1'")),
        }
    }

    fn sequence_start(&mut self, record: Bytes) -> Result<VideoTag, FlvError> {
        // Frames after a sequence header that cannot be read cannot be read either.
        self.length_size = None;
        let length_size = avc::parse_avcc(&record)?.length_size;
        let params = avc::params_from_avcc(record)?;
        self.length_size = Some(length_size);
        Ok(VideoTag::Params(params))
    }

    /// `key_frame_type`: the tag's FrameType says key frame.
    fn coded_frames(&self, key_frame_type: bool, composition_ms: i32, data: Bytes) -> Result<VideoTag, FlvError> {
        let length_size = self.length_size.ok_or(FlvError::NoSequenceHeader)?;
        Ok(match to_four_byte_lengths(data, length_size)? {
            // Segments start on key frames and must decode on their own, which only an IDR
            // picture guarantees (ITU-T H.264 §3, "IDR picture").
            Some(AccessUnit { data, idr }) => VideoTag::Frame { keyframe: key_frame_type && idr, composition_ms, data },
            None => VideoTag::Nothing,
        })
    }
}

/// Parses one audio tag body.
pub fn parse_audio(body: Bytes) -> Result<AudioTag, FlvError> {
    // Some publishers send empty audio messages while muted.
    let Some(&first) = body.first() else { return Ok(AudioTag::Nothing) };
    match first >> 4 {
        SOUND_FORMAT_AAC => {
            let &packet_type = body.get(1).ok_or(FlvError::Truncated("AACPacketType"))?;
            match packet_type {
                AAC_SEQUENCE_HEADER => Ok(AudioTag::Params(aac::parse_asc(body.slice(2..))?)),
                AAC_RAW => Ok(aac_frame(body.slice(2..))),
                _ => Err(FlvError::Malformed("AACPacketType is not 0 or 1")),
            }
        }
        SOUND_FORMAT_EX_HEADER => parse_enhanced_audio(&body, first),
        other => Err(FlvError::UnsupportedCodec(legacy_sound_format_name(other))),
    }
}

/// A raw AAC frame; an empty one (a tag header alone, sent for silence) carries nothing.
fn aac_frame(frame: Bytes) -> AudioTag {
    if frame.is_empty() { AudioTag::Nothing } else { AudioTag::Frame(frame) }
}

/// ExAudioTagHeader and ExAudioTagBody (E-RTMP "Enhanced Audio").
fn parse_enhanced_audio(body: &Bytes, first: u8) -> Result<AudioTag, FlvError> {
    let mut pos = 1;
    let packet_type = skip_mod_ex(body, &mut pos, first & 0x0f, AUDIO_MOD_EX)?;
    if packet_type == AUDIO_MULTITRACK {
        return Err(FlvError::UnsupportedCodec("multitrack audio (enhanced RTMP)".to_owned()));
    }
    let fourcc = take::<4>(body, &mut pos, "audio FourCC")?;
    if &fourcc != b"mp4a" {
        return Err(FlvError::UnsupportedCodec(audio_fourcc_name(fourcc)));
    }
    match packet_type {
        AUDIO_SEQUENCE_START => Ok(AudioTag::Params(aac::parse_asc(body.slice(pos..))?)),
        AUDIO_CODED_FRAMES => Ok(aac_frame(body.slice(pos..))),
        // SequenceEnd ends nothing the next SequenceStart would not replace, and AAC's own
        // channelConfiguration already says what MultichannelConfig would: neither is forwarded.
        AUDIO_SEQUENCE_END | AUDIO_MULTICHANNEL_CONFIG => Ok(AudioTag::Nothing),
        _ => Err(FlvError::Malformed("enhanced RTMP AudioPacketType not defined for 'mp4a'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0.1 s of `testsrc2` at 128x72 (libx264 High) and a 440 Hz sine (ffmpeg AAC-LC, 44.1 kHz
    /// stereo), muxed by ffmpeg 5.1's FLV muxer.
    const FLV: &[u8] = include_bytes!("testdata/x264_aac_128x72.flv");

    /// (tag type, body) of every tag in an FLV file (FLV spec v10.1 §E.2, §E.3).
    fn flv_tags(file: &'static [u8]) -> Vec<(u8, Bytes)> {
        let file = Bytes::from_static(file);
        assert_eq!(&file[..3], b"FLV");
        let mut pos = u32::from_be_bytes(file[5..9].try_into().unwrap()) as usize + 4;
        let mut tags = Vec::new();
        while pos + 11 <= file.len() {
            let size = u32::from_be_bytes([0, file[pos + 1], file[pos + 2], file[pos + 3]]) as usize;
            tags.push((file[pos], file.slice(pos + 11..pos + 11 + size)));
            pos += 11 + size + 4;
        }
        tags
    }

    fn video_tags() -> Vec<Bytes> {
        flv_tags(FLV).into_iter().filter(|(kind, _)| *kind == 9).map(|(_, body)| body).collect()
    }

    fn audio_tags() -> Vec<Bytes> {
        flv_tags(FLV).into_iter().filter(|(kind, _)| *kind == 8).map(|(_, body)| body).collect()
    }

    /// The avcC record of the file's sequence header.
    fn avcc() -> Bytes {
        video_tags()[0].slice(5..)
    }

    fn primed() -> VideoDemuxer {
        let mut demuxer = VideoDemuxer::new();
        assert!(matches!(demuxer.parse(video_tags()[0].clone()), Ok(VideoTag::Params(_))));
        demuxer
    }

    /// A legacy AVC NALU tag body around `data`.
    fn nalu_tag(first: u8, composition: [u8; 3], data: &[u8]) -> Bytes {
        let mut body = vec![first, AVC_NALU];
        body.extend_from_slice(&composition);
        body.extend_from_slice(data);
        Bytes::from(body)
    }

    #[test]
    fn real_video_tags() {
        let tags = video_tags();
        let mut demuxer = VideoDemuxer::new();
        let Ok(VideoTag::Params(params)) = demuxer.parse(tags[0].clone()) else { panic!("sequence header") };
        assert_eq!((params.width, params.height, params.codec.as_str()), (128, 72, "avc1.64000A"));
        assert_eq!(params.avcc, tags[0].slice(5..));

        let Ok(VideoTag::Frame { keyframe, composition_ms, data }) = demuxer.parse(tags[1].clone()) else {
            panic!("keyframe")
        };
        assert!(keyframe);
        assert_eq!(composition_ms, 67);
        // Already 4-byte lengths with nothing to drop: the body itself, not a copy.
        assert_eq!(data.as_ptr(), tags[1][5..].as_ptr());
        assert_eq!(data.len(), tags[1].len() - 5);
        assert_eq!(data.len(), 2275);

        let expected = [(false, 100), (false, 33)];
        for (tag, (key, cts)) in tags[2..4].iter().zip(expected) {
            let Ok(VideoTag::Frame { keyframe, composition_ms, data }) = demuxer.parse(tag.clone()) else {
                panic!("inter frame")
            };
            assert_eq!((keyframe, composition_ms), (key, cts));
            assert_eq!(data.as_ptr(), tag[5..].as_ptr());
        }
        assert_eq!(demuxer.parse(tags[4].clone()), Ok(VideoTag::Nothing)); // end of sequence
        assert_eq!(tags.len(), 5);
    }

    #[test]
    fn real_audio_tags() {
        let tags = audio_tags();
        let Ok(AudioTag::Params(params)) = parse_audio(tags[0].clone()) else { panic!("sequence header") };
        assert_eq!(params.asc.as_ref(), [0x12, 0x10, 0x56, 0xe5, 0x00]);
        assert_eq!(
            (params.sample_rate, params.channels, params.codec.as_str(), params.frame_samples),
            (44100, 2, "mp4a.40.2", 1024)
        );
        for tag in &tags[1..] {
            let Ok(AudioTag::Frame(frame)) = parse_audio(tag.clone()) else { panic!("raw frame") };
            assert_eq!(frame.as_ptr(), tag[2..].as_ptr());
            assert_eq!(frame.len(), tag.len() - 2);
        }
        assert_eq!(tags.len(), 7);
    }

    #[test]
    fn frame_before_sequence_header() {
        let mut demuxer = VideoDemuxer::new();
        assert_eq!(demuxer.parse(video_tags()[1].clone()), Err(FlvError::NoSequenceHeader));
    }

    #[test]
    fn negative_composition_time() {
        let mut demuxer = primed();
        let tag = nalu_tag(0x27, [0xff, 0xff, 0xdf], &[0, 0, 0, 2, 0x41, 0x9a]);
        let Ok(VideoTag::Frame { composition_ms, .. }) = demuxer.parse(tag) else { panic!("frame") };
        assert_eq!(composition_ms, -33);
        assert_eq!(si24([0x80, 0, 0]), -8_388_608);
        assert_eq!(si24([0x7f, 0xff, 0xff]), 8_388_607);
    }

    #[test]
    fn aud_and_filler_are_dropped() {
        let mut demuxer = primed();
        let tag = nalu_tag(
            0x17,
            [0, 0, 0],
            &[0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 3, 0x65, 0x88, 0x84, 0, 0, 0, 3, 0x0c, 0xff, 0xff, 0, 0, 0, 1, 0x06],
        );
        let Ok(VideoTag::Frame { keyframe: true, composition_ms: 0, data }) = demuxer.parse(tag) else {
            panic!("frame")
        };
        assert_eq!(data.as_ref(), [0, 0, 0, 3, 0x65, 0x88, 0x84, 0, 0, 0, 1, 0x06]);

        let only_dropped = nalu_tag(0x27, [0, 0, 0], &[0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 2, 0x0c, 0xff]);
        assert_eq!(demuxer.parse(only_dropped), Ok(VideoTag::Nothing));
        assert_eq!(demuxer.parse(nalu_tag(0x27, [0, 0, 0], &[])), Ok(VideoTag::Nothing));
    }

    #[test]
    fn only_an_idr_picture_is_a_keyframe() {
        let mut demuxer = primed();
        // FrameType 1 on an open-GOP I picture: recovery point SEI then a non-IDR slice (type 1).
        let open_gop_i = [0, 0, 0, 3, 0x06, 0x06, 0x01, 0, 0, 0, 3, 0x61, 0x88, 0x84];
        let tag = nalu_tag(0x17, [0, 0, 0], &open_gop_i);
        let Ok(VideoTag::Frame { keyframe, data, .. }) = demuxer.parse(tag.clone()) else { panic!("frame") };
        assert!(!keyframe);
        assert_eq!(data.as_ptr(), tag[5..].as_ptr(), "still not a copy");

        let mut enhanced = b"\x93avc1".to_vec();
        enhanced.extend_from_slice(&open_gop_i);
        let Ok(VideoTag::Frame { keyframe, .. }) = demuxer.parse(Bytes::from(enhanced)) else { panic!("frame") };
        assert!(!keyframe);

        // An IDR slice after other NAL units still makes a key frame, also when the NAL units are
        // copied to drop an AUD.
        let idr = [0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 3, 0x06, 0x05, 0x01, 0, 0, 0, 3, 0x65, 0x88, 0x84];
        let Ok(VideoTag::Frame { keyframe, .. }) = demuxer.parse(nalu_tag(0x17, [0, 0, 0], &idr)) else {
            panic!("frame")
        };
        assert!(keyframe);
        // And an IDR slice in a tag whose FrameType is not 1 is not.
        let Ok(VideoTag::Frame { keyframe, .. }) = demuxer.parse(nalu_tag(0x27, [0, 0, 0], &idr)) else {
            panic!("frame")
        };
        assert!(!keyframe);
    }

    #[test]
    fn short_nal_lengths_become_4_byte_lengths() {
        for length_size_minus_one in [0u8, 1] {
            let mut record = avcc().to_vec();
            record[4] = 0xfc | length_size_minus_one;
            let mut header = vec![0x17, AVC_SEQUENCE_HEADER, 0, 0, 0];
            header.extend_from_slice(&record);
            let mut demuxer = VideoDemuxer::new();
            let Ok(VideoTag::Params(params)) = demuxer.parse(Bytes::from(header)) else { panic!("params") };
            assert_eq!(params.avcc, avcc(), "rebuilt with 4-byte lengths");

            let prefix = |len: u8| if length_size_minus_one == 0 { vec![len] } else { vec![0, len] };
            let mut data = prefix(2);
            data.extend_from_slice(&[0x09, 0xf0]);
            data.extend(prefix(3));
            data.extend_from_slice(&[0x65, 0x88, 0x84]);
            data.extend(prefix(2));
            data.extend_from_slice(&[0x41, 0x9a]);
            let Ok(VideoTag::Frame { data, .. }) = demuxer.parse(nalu_tag(0x17, [0, 0, 0], &data)) else {
                panic!("frame")
            };
            assert_eq!(data.as_ref(), [0, 0, 0, 3, 0x65, 0x88, 0x84, 0, 0, 0, 2, 0x41, 0x9a]);
        }
    }

    #[test]
    fn nal_lengths_past_the_tag_are_refused() {
        let mut demuxer = primed();
        let overrun = nalu_tag(0x27, [0, 0, 0], &[0, 0, 0, 9, 0x41, 0x9a]);
        assert_eq!(demuxer.parse(overrun), Err(FlvError::Malformed("NAL unit length runs past the end of the tag")));
        let cut_prefix = nalu_tag(0x27, [0, 0, 0], &[0, 0, 0, 2, 0x41, 0x9a, 0, 0]);
        assert_eq!(demuxer.parse(cut_prefix), Err(FlvError::Malformed("NAL unit length prefix cut short")));
    }

    #[test]
    fn a_bad_sequence_header_forgets_the_previous_one() {
        let mut demuxer = primed();
        let bad = Bytes::from_static(&[0x17, AVC_SEQUENCE_HEADER, 0, 0, 0, 1, 100, 0]);
        assert!(matches!(demuxer.parse(bad), Err(FlvError::Avc(AvcError::BadRecord(_)))));
        assert_eq!(demuxer.parse(video_tags()[1].clone()), Err(FlvError::NoSequenceHeader));
    }

    #[test]
    fn command_frames_and_bad_packet_types() {
        let mut demuxer = primed();
        assert_eq!(demuxer.parse(Bytes::from_static(&[0x57, 0x00])), Ok(VideoTag::Nothing));
        assert_eq!(demuxer.parse(Bytes::from_static(&[0x52, 0x01])), Ok(VideoTag::Nothing));
        assert_eq!(
            demuxer.parse(Bytes::from_static(&[0x17, 0x03, 0, 0, 0])),
            Err(FlvError::Malformed("AVCPacketType is not 0, 1 or 2"))
        );
        assert_eq!(demuxer.parse(Bytes::new()), Err(FlvError::Truncated("empty video tag")));
        assert_eq!(demuxer.parse(Bytes::from_static(&[0x17, 0x01, 0])), Err(FlvError::Truncated("CompositionTime")));
    }

    #[test]
    fn legacy_video_codecs_are_refused_by_name() {
        let mut demuxer = VideoDemuxer::new();
        let refusal = |demuxer: &mut VideoDemuxer, first: u8| match demuxer.parse(Bytes::from(vec![first, 0, 0, 0, 0]))
        {
            Err(FlvError::UnsupportedCodec(name)) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(refusal(&mut demuxer, 0x22), "Sorenson H.263 (FLV codec id 2)");
        assert_eq!(refusal(&mut demuxer, 0x14), "On2 VP6 (FLV codec id 4)");
        assert_eq!(refusal(&mut demuxer, 0x1c), "HEVC (non-standard FLV codec id 12; use enhanced RTMP 'hvc1')");
        assert_eq!(refusal(&mut demuxer, 0x1f), "unknown video (FLV codec id 15)");
    }

    #[test]
    fn enhanced_rtmp_non_avc_is_refused_by_name() {
        let mut demuxer = VideoDemuxer::new();
        let mut refusal = |body: &'static [u8]| match demuxer.parse(Bytes::from_static(body)) {
            Err(FlvError::UnsupportedCodec(name)) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(refusal(b"\x90hvc1\x01\x02"), "HEVC (enhanced RTMP 'hvc1')");
        assert_eq!(refusal(b"\x91hvc1\x00\x00\x00\x00\x00\x00\x05"), "HEVC (enhanced RTMP 'hvc1')");
        assert_eq!(refusal(b"\x90av01\x81"), "AV1 (enhanced RTMP 'av01')");
        assert_eq!(refusal(b"\xa3vp09"), "VP9 (enhanced RTMP 'vp09')");
        assert_eq!(refusal(b"\x90\x00\x01\x02\x03"), "unknown video (enhanced RTMP '0x00010203')");
        assert_eq!(refusal(b"\x96\x00avc1"), "multitrack video (enhanced RTMP)");
        // A ModEx block (TimestampOffsetNano, 3 bytes) before the packet type and FourCC.
        assert_eq!(refusal(b"\x97\x02\x00\x01\x02\x01hvc1"), "HEVC (enhanced RTMP 'hvc1')");
    }

    #[test]
    fn enhanced_rtmp_avc1() {
        let tags = video_tags();
        let mut demuxer = VideoDemuxer::new();
        let mut start = b"\x90avc1".to_vec();
        start.extend_from_slice(&avcc());
        let Ok(VideoTag::Params(params)) = demuxer.parse(Bytes::from(start)) else { panic!("sequence start") };
        assert_eq!(params.codec, "avc1.64000A");

        // CodedFrames: SI24 composition time then the NAL units.
        let mut coded = b"\x91avc1\x00\x00\x43".to_vec();
        coded.extend_from_slice(&tags[1][5..]);
        let Ok(VideoTag::Frame { keyframe: true, composition_ms: 67, data }) = demuxer.parse(Bytes::from(coded)) else {
            panic!("coded frames")
        };
        assert_eq!(data, tags[1].slice(5..));

        // CodedFramesX: composition time 0, not on the wire; preceded by a ModEx block.
        let mut coded_x = b"\xa7\x02\x00\x01\x02\x03avc1".to_vec();
        coded_x.extend_from_slice(&tags[2][5..]);
        let Ok(VideoTag::Frame { keyframe: false, composition_ms: 0, data }) = demuxer.parse(Bytes::from(coded_x))
        else {
            panic!("coded frames x")
        };
        assert_eq!(data, tags[2].slice(5..));

        assert_eq!(demuxer.parse(Bytes::from_static(b"\x92avc1")), Ok(VideoTag::Nothing));
        assert_eq!(demuxer.parse(Bytes::from_static(b"\x94avc1\x02\x00\x09colorInfo")), Ok(VideoTag::Nothing));
        assert_eq!(demuxer.parse(Bytes::from_static(b"\xd0\x00")), Ok(VideoTag::Nothing)); // command frame
        assert_eq!(demuxer.parse(Bytes::from_static(b"\x91avc1\x00")), Err(FlvError::Truncated("CompositionTime")));
        assert_eq!(demuxer.parse(Bytes::from_static(b"\x90av")), Err(FlvError::Truncated("video FourCC")));
        assert_eq!(demuxer.parse(Bytes::from_static(b"\x97\x05\x00")), Err(FlvError::Truncated("ModEx data")));
    }

    #[test]
    fn audio_formats_are_refused_by_name() {
        let refusal = |body: &'static [u8]| match parse_audio(Bytes::from_static(body)) {
            Err(FlvError::UnsupportedCodec(name)) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(refusal(&[0x2f, 0xff, 0xfb]), "MP3 (FLV SoundFormat 2)");
        assert_eq!(refusal(&[0x6e, 0x00]), "Nellymoser (FLV SoundFormat 6)");
        assert_eq!(refusal(&[0x72, 0x00]), "G.711 A-law (FLV SoundFormat 7)");
        assert_eq!(refusal(&[0x82, 0x00]), "G.711 mu-law (FLV SoundFormat 8)");
        assert_eq!(refusal(&[0xb6, 0x00]), "Speex (FLV SoundFormat 11)");
        assert_eq!(refusal(b"\x90Opus\x01"), "Opus (enhanced RTMP audio 'Opus')");
        assert_eq!(refusal(b"\x91fLaC"), "FLAC (enhanced RTMP audio 'fLaC')");
        assert_eq!(refusal(b"\x95\x00mp4a"), "multitrack audio (enhanced RTMP)");
    }

    #[test]
    fn enhanced_rtmp_mp4a() {
        let Ok(AudioTag::Params(params)) = parse_audio(Bytes::from_static(b"\x90mp4a\x11\x90")) else {
            panic!("sequence start")
        };
        assert_eq!((params.sample_rate, params.channels), (48000, 2));
        let body = Bytes::from_static(b"\x91mp4a\x21\x10\x04");
        assert_eq!(parse_audio(body.clone()), Ok(AudioTag::Frame(body.slice(5..))));
        assert_eq!(
            parse_audio(Bytes::from_static(b"\x93mp4a")),
            Err(FlvError::Malformed("enhanced RTMP AudioPacketType not defined for 'mp4a'"))
        );
    }

    #[test]
    fn audio_tags_with_nothing_to_forward() {
        // Enhanced RTMP SequenceEnd, then MultichannelConfig (channel order, count and flags).
        assert_eq!(parse_audio(Bytes::from_static(b"\x92mp4a")), Ok(AudioTag::Nothing));
        assert_eq!(parse_audio(Bytes::from_static(b"\x94mp4a\x01\x02\x00\x00\x00\x03")), Ok(AudioTag::Nothing));
        // Empty tags: no header at all, or an AAC raw header with no frame; also after a ModEx block.
        assert_eq!(parse_audio(Bytes::new()), Ok(AudioTag::Nothing));
        assert_eq!(parse_audio(Bytes::from_static(&[0xaf, 0x01])), Ok(AudioTag::Nothing));
        assert_eq!(parse_audio(Bytes::from_static(b"\x91mp4a")), Ok(AudioTag::Nothing));
        assert_eq!(parse_audio(Bytes::from_static(b"\x97\x02\x00\x01\x02\x02mp4a")), Ok(AudioTag::Nothing));
    }

    #[test]
    fn malformed_audio_tags() {
        assert_eq!(parse_audio(Bytes::from_static(&[0xaf])), Err(FlvError::Truncated("AACPacketType")));
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xaf, 0x02, 0x00])),
            Err(FlvError::Malformed("AACPacketType is not 0 or 1"))
        );
        assert!(matches!(parse_audio(Bytes::from_static(&[0xaf, 0x00, 0x12])), Err(FlvError::Aac(_))));
    }

    #[test]
    fn truncated_tags_never_panic() {
        for body in video_tags() {
            for len in 0..body.len() {
                let _ = primed().parse(body.slice(..len));
                let _ = VideoDemuxer::new().parse(body.slice(..len));
            }
        }
        for body in audio_tags() {
            for len in 0..body.len() {
                let _ = parse_audio(body.slice(..len));
            }
        }
        // Every cut of the sequence header short of the end of its PPS is refused (the 4-byte
        // High-profile trailer after it is optional).
        let header = video_tags()[0].clone();
        assert_eq!(header[header.len() - 4..], [0xfd, 0xf8, 0xf8, 0x00]);
        for len in 0..header.len() - 4 {
            assert!(VideoDemuxer::new().parse(header.slice(..len)).is_err(), "length {len}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut demuxer = primed();
        for _ in 0..50_000 {
            let len = (next() % 40) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = demuxer.parse(Bytes::from(body.clone()));
            let _ = parse_audio(Bytes::from(body));
        }
    }
}
