//! CMAF/fMP4 boxes (ISO/IEC 14496-12, ISO/IEC 23000-19): the init segment of a track and the
//! `moof`+`mdat` of a fragment, encoded with `mp4-atom`. Sample payloads are never copied: a
//! fragment is the box header bytes followed by the samples' own `Bytes`.

use bytes::Bytes;
use mp4_atom::Encode;
use mp4_atom::esds::{DecoderConfig, DecoderSpecific, EsDescriptor, SLConfig};
use mp4_atom::{
    Atom, Audio, Avc1, Avcc, Codec, Dinf, Dref, Esds, FourCC, Ftyp, Hdlr, Header, Mdat, Mdhd, Mdia, Mfhd, Minf, Moof,
    Moov, Mp4a, Mvex, Mvhd, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples,
    Url, Visual, Vmhd,
};

use crate::media::{AudioParams, TIMESCALE, VideoParams, aac};

/// The one track of a CMAF track file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackParams {
    Video(VideoParams),
    Audio(AudioParams),
}

impl TrackParams {
    /// The track's timescale: 90 kHz for video (the internal clock), the sample rate for audio.
    pub fn timescale(&self) -> u32 {
        match self {
            TrackParams::Video(_) => TIMESCALE,
            TrackParams::Audio(a) => a.sample_rate,
        }
    }
}

/// One sample of a fragment, in the track's timescale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentSample {
    pub duration: u32,
    pub size: u32,
    pub keyframe: bool,
    /// pts − dts.
    pub composition_offset: i32,
}

/// Encoded bytes made of several chunks (box headers, then sample payloads as they were).
#[derive(Debug, Clone, Default)]
pub struct Fragment {
    pub chunks: Vec<Bytes>,
}

impl Fragment {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a box could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    /// The AVCDecoderConfigurationRecord does not parse (ISO/IEC 14496-15 §5.3.3.1).
    #[error("invalid AVCDecoderConfigurationRecord: {0}")]
    Avcc(mp4_atom::Error),
    #[error("cannot encode the {0} box: {1}")]
    Encode(&'static str, mp4_atom::Error),
    /// `samples` and `payloads` disagree: a `trun` must describe exactly the bytes in the `mdat`.
    #[error("{samples} samples but {payloads} payloads")]
    SampleCount { samples: usize, payloads: usize },
    #[error("sample {index} declares {declared} bytes but its payload holds {actual}")]
    SampleSize { index: usize, declared: u32, actual: usize },
}

/// The only track of every file this module writes (ISO/IEC 23000-19: a CMAF track file holds exactly one track).
const TRACK_ID: u32 = 1;

/// `sample_flags` (ISO/IEC 14496-12 §8.8.3.1): `sample_depends_on` = 2, "does not depend on
/// others" (an I picture).
const SYNC_SAMPLE_FLAGS: u32 = 2 << 24;
/// `sample_depends_on` = 1 ("depends on others") and `sample_is_non_sync_sample` = 1.
const NON_SYNC_SAMPLE_FLAGS: u32 = (1 << 24) | (1 << 16);

/// The `sample_flags` word of a sample (ISO/IEC 14496-12 §8.8.3.1).
pub fn sample_flags(keyframe: bool) -> u32 {
    if keyframe { SYNC_SAMPLE_FLAGS } else { NON_SYNC_SAMPLE_FLAGS }
}

/// The init segment (`ftyp` + `moov` with one track and `mvex`).
///
/// Only a malformed `avcC` record (or parameters out of range for the boxes) can make encoding
/// fail; then the error is logged and the result is empty, which a player rejects as a whole
/// instead of misdecoding. [`try_init_segment`] returns the error instead.
pub fn init_segment(track: &TrackParams) -> Bytes {
    match try_init_segment(track) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot write the init segment");
            Bytes::new()
        }
    }
}

/// The init segment, or why it cannot be written.
pub fn try_init_segment(track: &TrackParams) -> Result<Bytes, Fmp4Error> {
    let mut buf = Vec::with_capacity(1024);
    // Brands (ISO/IEC 14496-12 §4.3, ISO/IEC 23000-19 §7.2): `iso6` because the fragments use
    // its feature set (`tfdt`, default-base-is-moof, version 1 `trun` with signed composition
    // offsets); `cmfc`, the CMAF structural brand, since header and fragments follow CMAF's
    // constraints (one track, movie fragments, no samples in `moov`); `mp41` for players that
    // look for an MP4 (ISO/IEC 14496-14) brand before accepting `mp4a`/`esds`.
    Ftyp {
        major_brand: FourCC::new(b"iso6"),
        minor_version: 0,
        compatible_brands: vec![FourCC::new(b"iso6"), FourCC::new(b"cmfc"), FourCC::new(b"mp41")],
    }
    .encode(&mut buf)
    .map_err(|e| Fmp4Error::Encode("ftyp", e))?;
    moov(track)?.encode(&mut buf).map_err(|e| Fmp4Error::Encode("moov", e))?;
    Ok(Bytes::from(buf))
}

fn moov(track: &TrackParams) -> Result<Moov, Fmp4Error> {
    let timescale = track.timescale();
    let (tkhd, handler, vmhd, smhd, codec) = match track {
        TrackParams::Video(v) => {
            let tkhd = Tkhd {
                track_id: TRACK_ID,
                enabled: true,
                in_movie: true,
                // 16.16 fixed point (§8.3.2.3); pixel sizes above 65535 cannot be expressed.
                width: clamp_u16(v.width).into(),
                height: clamp_u16(v.height).into(),
                ..Default::default()
            };
            (tkhd, b"vide", Some(Vmhd::default()), None, avc1(v)?)
        }
        TrackParams::Audio(a) => {
            let tkhd = Tkhd {
                track_id: TRACK_ID,
                enabled: true,
                in_movie: true,
                // §8.3.2.3: 0x0100 (full volume) for an audio track.
                volume: 1u8.into(),
                ..Default::default()
            };
            (tkhd, b"soun", None, Some(Smhd::default()), mp4a(a))
        }
    };
    let name = if handler == b"vide" { "VideoHandler" } else { "SoundHandler" };
    Ok(Moov {
        mvhd: Mvhd {
            timescale,
            // A fragmented movie's duration is unknown up front (§8.2.2.3: 0 for "not known").
            duration: 0,
            rate: 1u16.into(),
            volume: 1u8.into(),
            next_track_id: TRACK_ID + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: vec![Trex {
                track_id: TRACK_ID,
                // §8.8.3: every fragment refers to the one sample entry; the other defaults are
                // overridden per sample in each `trun`.
                default_sample_description_index: 1,
                ..Default::default()
            }],
        }),
        trak: vec![Trak {
            tkhd,
            mdia: Mdia {
                mdhd: Mdhd { timescale, duration: 0, language: "und".into(), ..Default::default() },
                hdlr: Hdlr { handler: FourCC::new(handler), name: name.into() },
                minf: Minf {
                    vmhd,
                    smhd,
                    // §8.7.2: a `url ` entry with no location and the self-contained flag: the
                    // media data is in the same file (the fragments that follow this header).
                    dinf: Dinf { dref: Dref { entries: vec![Url::default().into()] } },
                    stbl: Stbl {
                        stsd: Stsd { codecs: vec![codec] },
                        // The sample tables stay empty: all samples are in movie fragments (§8.8.1).
                        stco: Some(Stco::default()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn avc1(v: &VideoParams) -> Result<Codec, Fmp4Error> {
    // The record is decoded only to hand it to the encoder; re-encoding writes back the same
    // bytes, except that reserved bits come out set to 1 as ISO/IEC 14496-15 §5.3.3.1 requires.
    let avcc = Avcc::decode_body(&mut v.avcc.as_ref()).map_err(Fmp4Error::Avcc)?;
    Ok(Avc1 {
        visual: Visual {
            // §8.5.2.2: the index of the `dref` entry that holds the media data.
            data_reference_index: 1,
            width: clamp_u16(v.width),
            height: clamp_u16(v.height),
            ..Default::default()
        },
        avcc,
        btrt: None,
        colr: None,
        pasp: None,
        taic: None,
        fiel: None,
        spatial: None,
    }
    .into())
}

fn mp4a(a: &AudioParams) -> Codec {
    Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(a.channels),
            sample_size: 16,
            // §12.2.3: 16.16 fixed point; a rate that does not fit is left 0 and comes from the
            // AudioSpecificConfig, which is what AAC decoders use anyway.
            sample_rate: u16::try_from(a.sample_rate).unwrap_or(0).into(),
        },
        esds: Esds {
            es_desc: EsDescriptor {
                es_id: TRACK_ID as u16,
                dec_config: DecoderConfig {
                    // ISO/IEC 14496-1 §7.2.6.6 (Tables 5 and 6): objectTypeIndication 0x40 = Audio
                    // ISO/IEC 14496-3; streamType 5 = AudioStream.
                    object_type_indication: 0x40,
                    stream_type: 5,
                    up_stream: 0,
                    buffer_size_db: Default::default(),
                    max_bitrate: 0,
                    avg_bitrate: 0,
                    // DecoderSpecificInfo = the AudioSpecificConfig bytes, written verbatim.
                    dec_specific: Some(DecoderSpecific {
                        profile: 2,
                        // Used only when no ASC bytes are given; 15 escapes to an explicit rate (§1.6.3.4).
                        freq_index: aac::frequency_index(a.sample_rate).unwrap_or(15),
                        chan_conf: a.channels.min(7),
                        raw: a.asc.to_vec(),
                    }),
                },
                sl_config: SLConfig::default(),
                ..Default::default()
            },
        },
        btrt: None,
        taic: None,
    }
    .into()
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// One `moof` + `mdat`: `sequence` is the `mfhd` sequence number, `base_decode_time` the `tfdt`
/// in the track timescale, `payloads[i]` the bytes of `samples[i]`.
///
/// Inconsistent input (counts or sizes that disagree) is logged and yields an empty fragment
/// rather than a `trun` that points at the wrong bytes; [`try_fragment`] returns the error.
pub fn fragment(sequence: u32, base_decode_time: u64, samples: &[FragmentSample], payloads: Vec<Bytes>) -> Fragment {
    match try_fragment(sequence, base_decode_time, samples, payloads) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, sequence, "cannot write a fragment");
            Fragment::default()
        }
    }
}

/// The `emsg` scheme for ID3 timed metadata in CMAF (AOM "Carriage of ID3 Timed Metadata in the
/// Common Media Application Format", which hls.js and Apple's players read).
pub const ID3_SCHEME: &str = "https://aomedia.org/emsg/ID3";

/// An `emsg` box, version 1 (ISO/IEC 23009-1 §5.10.3.3): `message` (an ID3 tag) presented at
/// `presentation_time` in `timescale`, with no duration, as the tag is an instant.
pub fn id3_emsg(timescale: u32, presentation_time: u64, id: u32, message: &[u8]) -> Result<Bytes, Fmp4Error> {
    let emsg = mp4_atom::Emsg {
        timescale,
        presentation_time: mp4_atom::EmsgTimestamp::Absolute(presentation_time),
        // 0xFFFFFFFF means "unknown"; ID3 carriage uses 0 for an instant event.
        event_duration: 0,
        id,
        scheme_id_uri: ID3_SCHEME.to_string(),
        value: String::new(),
        message_data: message.to_vec(),
    };
    let mut out = Vec::with_capacity(64 + message.len());
    emsg.encode(&mut out).map_err(|e| Fmp4Error::Encode("emsg", e))?;
    Ok(Bytes::from(out))
}

/// One `moof` + `mdat`, or why it cannot be written.
pub fn try_fragment(
    sequence: u32,
    base_decode_time: u64,
    samples: &[FragmentSample],
    payloads: Vec<Bytes>,
) -> Result<Fragment, Fmp4Error> {
    if samples.len() != payloads.len() {
        return Err(Fmp4Error::SampleCount { samples: samples.len(), payloads: payloads.len() });
    }
    for (index, (s, p)) in samples.iter().zip(&payloads).enumerate() {
        if usize::try_from(s.size).ok() != Some(p.len()) {
            return Err(Fmp4Error::SampleSize { index, declared: s.size, actual: p.len() });
        }
    }
    let mdat_body: usize = payloads.iter().map(Bytes::len).sum();
    let mut mdat_header = Vec::with_capacity(16);
    // An 8-byte header, or 16 with a 64-bit largesize when the payloads exceed 4 GiB (§4.2).
    Header { kind: Mdat::KIND, size: Some(mdat_body) }
        .encode(&mut mdat_header)
        .map_err(|e| Fmp4Error::Encode("mdat", e))?;

    let mut moof = Moof {
        mfhd: Mfhd { sequence_number: sequence },
        traf: vec![Traf {
            tfhd: Tfhd {
                track_id: TRACK_ID,
                // §8.8.7.1: offsets in `trun` count from the first byte of this `moof` (CMAF
                // fragments require it, so no base_data_offset).
                default_base_is_moof: true,
                ..Default::default()
            },
            // mp4-atom writes version 1 (64-bit), so the decode time never wraps (§8.8.12).
            tfdt: Some(Tfdt { base_media_decode_time: base_decode_time }),
            trun: vec![Trun {
                data_offset: Some(0),
                samples: TrunSamples::Explicit(
                    samples
                        .iter()
                        .map(|s| TrunEntry {
                            duration: Some(s.duration),
                            size: Some(s.size),
                            flags: Some(sample_flags(s.keyframe)),
                            // Version 1 `trun` (§8.8.8.2): signed offsets, so a B-frame stream needs
                            // no edit list to shift its first presentation time.
                            cts: Some(i64::from(s.composition_offset)),
                        })
                        .collect(),
                ),
            }],
            ..Default::default()
        }],
    };
    // The data offset's field has a fixed size, so the `moof` length does not depend on its
    // value: measure once, then write the real offset (§8.8.8.3: from the `moof` start to the
    // first byte of the first sample, just past the `mdat` header).
    let mut probe = Vec::new();
    moof.encode(&mut probe).map_err(|e| Fmp4Error::Encode("moof", e))?;
    let offset = i32::try_from(probe.len() + mdat_header.len())
        .map_err(|_| Fmp4Error::Encode("trun", mp4_atom::Error::TooLarge(Trun::KIND)))?;
    if let Some(trun) = moof.traf.first_mut().and_then(|t| t.trun.first_mut()) {
        trun.data_offset = Some(offset);
    }
    let mut moof_bytes = Vec::with_capacity(probe.len());
    moof.encode(&mut moof_bytes).map_err(|e| Fmp4Error::Encode("moof", e))?;

    let mut chunks = Vec::with_capacity(payloads.len() + 2);
    chunks.push(Bytes::from(moof_bytes));
    chunks.push(Bytes::from(mdat_header));
    chunks.extend(payloads);
    Ok(Fragment { chunks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::{Any, Decode};

    fn video_params() -> VideoParams {
        // x264's record for testdata/h264_320x180_30fps_2s.mp4 (High profile, level 1.3, 4-byte NAL
        // lengths, with the High-profile chroma/bit-depth extension).
        let avcc = Bytes::from_static(&[
            0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0x9f, 0x9f,
            0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00,
            0x05, 0x68, 0xef, 0x83, 0x1c, 0xb0, 0xfd, 0xf8, 0xf8, 0x00,
        ]);
        VideoParams { avcc, width: 320, height: 180, codec: "avc1.64000d".into() }
    }

    fn audio_params() -> AudioParams {
        AudioParams {
            asc: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        }
    }

    fn decode_init(bytes: &[u8]) -> (Ftyp, Moov) {
        let mut buf = bytes;
        let ftyp = Ftyp::decode(&mut buf).expect("ftyp");
        let moov = Moov::decode(&mut buf).expect("moov");
        assert!(buf.is_empty(), "trailing bytes after moov");
        (ftyp, moov)
    }

    fn concat(f: &Fragment) -> Vec<u8> {
        f.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn video_init_segment_decodes() {
        let params = video_params();
        let init = init_segment(&TrackParams::Video(params.clone()));
        let (ftyp, moov) = decode_init(&init);
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
        assert!(ftyp.compatible_brands.contains(&FourCC::new(b"cmfc")));
        assert_eq!(moov.mvhd.next_track_id, 2);
        let mvex = moov.mvex.expect("mvex");
        assert_eq!(mvex.trex.len(), 1);
        assert_eq!(mvex.trex[0].track_id, 1);
        assert_eq!(mvex.trex[0].default_sample_description_index, 1);
        assert_eq!(moov.trak.len(), 1);
        let trak = &moov.trak[0];
        assert_eq!(trak.tkhd.track_id, 1);
        assert_eq!(trak.tkhd.width.integer(), 320);
        assert_eq!(trak.tkhd.height.integer(), 180);
        assert_eq!(trak.mdia.mdhd.timescale, 90_000);
        assert_eq!(trak.mdia.mdhd.language, "und");
        assert_eq!(trak.mdia.hdlr.handler, FourCC::new(b"vide"));
        assert!(trak.mdia.minf.vmhd.is_some());
        assert!(trak.mdia.minf.smhd.is_none());
        assert_eq!(trak.mdia.minf.dinf.dref.entries, vec![Url::default().into()]);
        let stbl = &trak.mdia.minf.stbl;
        assert!(stbl.stts.entries.is_empty());
        assert!(stbl.stsc.entries.is_empty());
        assert_eq!(stbl.stco.as_ref().map(|s| s.entries.len()), Some(0));
        let Some(Codec::Avc1(avc1)) = stbl.stsd.codecs.first() else { panic!("avc1 expected: {:?}", stbl.stsd) };
        assert_eq!((avc1.visual.width, avc1.visual.height), (320, 180));
        assert_eq!(avc1.visual.data_reference_index, 1);
        // The avcC payload is the record as given.
        let mut avcc = Vec::new();
        avc1.avcc.encode(&mut avcc).expect("avcC");
        assert_eq!(&avcc[8..], params.avcc.as_ref());
        assert_eq!(&avcc[4..8], b"avcC");
    }

    #[test]
    fn audio_init_segment_decodes() {
        let params = audio_params();
        let init = init_segment(&TrackParams::Audio(params.clone()));
        let (_, moov) = decode_init(&init);
        let trak = &moov.trak[0];
        assert_eq!(trak.tkhd.track_id, 1);
        assert_eq!(trak.tkhd.volume.integer(), 1);
        assert_eq!(trak.mdia.mdhd.timescale, 48_000);
        assert_eq!(trak.mdia.hdlr.handler, FourCC::new(b"soun"));
        assert!(trak.mdia.minf.smhd.is_some());
        let Some(Codec::Mp4a(mp4a)) = trak.mdia.minf.stbl.stsd.codecs.first() else { panic!("mp4a expected") };
        assert_eq!(mp4a.audio.channel_count, 2);
        assert_eq!(mp4a.audio.sample_rate.integer(), 48_000);
        let dc = &mp4a.esds.es_desc.dec_config;
        assert_eq!(dc.object_type_indication, 0x40);
        assert_eq!(dc.stream_type, 5);
        assert_eq!(dc.dec_specific.as_ref().map(|d| d.raw.as_slice()), Some(params.asc.as_ref()));
    }

    #[test]
    fn malformed_avcc_gives_an_error_not_a_panic() {
        let mut params = video_params();
        params.avcc = Bytes::from_static(&[0x01, 0x64, 0x00]);
        assert!(try_init_segment(&TrackParams::Video(params.clone())).is_err());
        assert!(init_segment(&TrackParams::Video(params)).is_empty());
    }

    #[test]
    fn fragment_decodes_and_data_offset_points_at_first_payload() {
        let payloads = vec![
            Bytes::from_static(b"\x00\x00\x00\x03key"),
            Bytes::from_static(b"\x00\x00\x00\x02p1"),
            Bytes::from_static(b"\x00\x00\x00\x04bfrm"),
        ];
        let samples = [
            FragmentSample { duration: 3000, size: 7, keyframe: true, composition_offset: 3000 },
            FragmentSample { duration: 3000, size: 6, keyframe: false, composition_offset: 6000 },
            FragmentSample { duration: 3001, size: 8, keyframe: false, composition_offset: -3000 },
        ];
        let f = fragment(7, 123_456_789_012, &samples, payloads.clone());
        // moof, mdat header, then the payloads themselves (the same allocations, not copies).
        assert_eq!(f.chunks.len(), 2 + payloads.len());
        for (chunk, payload) in f.chunks[2..].iter().zip(&payloads) {
            assert_eq!(chunk.as_ptr(), payload.as_ptr());
        }
        assert_eq!(f.chunks[1].len(), 8);
        let bytes = concat(&f);
        assert_eq!(bytes.len(), f.len());

        let mut buf = bytes.as_slice();
        let moof = Moof::decode(&mut buf).expect("moof");
        let moof_len = bytes.len() - buf.len();
        let header = Header::decode(&mut buf).expect("mdat header");
        assert_eq!(header.kind, Mdat::KIND);
        assert_eq!(header.size, Some(21));
        assert_eq!(buf.len(), 21);

        assert_eq!(moof.mfhd.sequence_number, 7);
        let traf = &moof.traf[0];
        assert_eq!(traf.tfhd.track_id, 1);
        assert!(traf.tfhd.default_base_is_moof);
        assert_eq!(traf.tfhd.base_data_offset, None);
        assert_eq!(traf.tfdt.as_ref().map(|t| t.base_media_decode_time), Some(123_456_789_012));
        let trun = &traf.trun[0];
        let offset = usize::try_from(trun.data_offset.expect("data_offset")).expect("positive");
        assert_eq!(offset, moof_len + 8);
        assert_eq!(&bytes[offset..offset + 7], b"\x00\x00\x00\x03key");
        let entries: Vec<TrunEntry> = trun.samples.iter().collect();
        assert_eq!(entries.len(), 3);
        let want = [(3000, 7, 0x0200_0000, 3000), (3000, 6, 0x0101_0000, 6000), (3001, 8, 0x0101_0000, -3000)];
        for (e, (d, s, fl, c)) in entries.iter().zip(want) {
            assert_eq!((e.duration, e.size, e.flags, e.cts), (Some(d), Some(s), Some(fl), Some(c)));
        }
    }

    #[test]
    fn single_sample_fragment_keeps_explicit_flags() {
        let f = fragment(
            1,
            0,
            &[FragmentSample { duration: 1024, size: 3, keyframe: true, composition_offset: 0 }],
            vec![Bytes::from_static(b"aac")],
        );
        let bytes = concat(&f);
        let Any::Moof(moof) = Any::decode(&mut bytes.as_slice()).expect("moof") else { panic!("moof first") };
        let e = moof.traf[0].trun[0].samples.get(0).expect("one sample");
        assert_eq!(e.flags, Some(SYNC_SAMPLE_FLAGS));
        assert_eq!(e.duration, Some(1024));
    }

    #[test]
    fn inconsistent_samples_give_an_empty_fragment() {
        let s = FragmentSample { duration: 1, size: 4, keyframe: true, composition_offset: 0 };
        assert!(try_fragment(1, 0, &[s], vec![]).is_err());
        assert!(try_fragment(1, 0, &[s], vec![Bytes::from_static(b"abc")]).is_err());
        assert!(fragment(1, 0, &[s], vec![Bytes::from_static(b"abc")]).is_empty());
    }

    #[test]
    fn id3_emsg_fields() {
        let tag = crate::package::id3::txxx_tag("", b"hello").expect("tag");
        let bytes = id3_emsg(90_000, 123_456, 7, &tag).expect("emsg");
        assert_eq!(&bytes[4..8], b"emsg");
        assert_eq!(bytes[8], 1, "version 1: absolute presentation time");
        let mut buf = &bytes[..];
        let e = mp4_atom::Emsg::decode(&mut buf).expect("decodes");
        assert_eq!(e.timescale, 90_000);
        assert_eq!(e.presentation_time, mp4_atom::EmsgTimestamp::Absolute(123_456));
        assert_eq!((e.event_duration, e.id), (0, 7));
        assert_eq!(e.scheme_id_uri, ID3_SCHEME);
        assert_eq!(e.value, "");
        assert_eq!(e.message_data, tag.to_vec());
        // Version 1 layout (ISO/IEC 23009-1 §5.10.3.3): timescale, 64-bit time, duration, id.
        assert_eq!(&bytes[12..16], &90_000u32.to_be_bytes());
        assert_eq!(&bytes[16..24], &123_456u64.to_be_bytes());
        assert_eq!(&bytes[28..32], &7u32.to_be_bytes());
        assert_eq!(&bytes[32..32 + ID3_SCHEME.len()], ID3_SCHEME.as_bytes());
    }
}
