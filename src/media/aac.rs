//! AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1).

use bytes::Bytes;

use super::AudioParams;
use super::bits::BitReader;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AacError {
    #[error("AudioSpecificConfig malformed: {0}")]
    Bad(&'static str),
}

/// Audio object types (ISO/IEC 14496-3 §1.5.1.1, Table 1.17) this module acts on.
const AOT_AAC_MAIN: u8 = 1;
const AOT_AAC_LC: u8 = 2;
const AOT_AAC_LTP: u8 = 4;
const AOT_SBR: u8 = 5;
const AOT_PS: u8 = 29;

/// samplingFrequencyIndex 0x0..=0xC (§1.6.3.4, Table 1.18); 0xD and 0xE are reserved.
const SAMPLING_FREQUENCIES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// u(n) for n ≤ 32; `what` names the field in the error when the config ends first.
fn bits(r: &mut BitReader<'_>, n: u32, what: &'static str) -> Result<u32, AacError> {
    r.bits(n).ok_or(AacError::Bad(what))
}

/// GetAudioObjectType() of §1.6.2.1: 5 bits, 31 escaping to 32 + 6 more bits.
fn audio_object_type(r: &mut BitReader<'_>) -> Result<u8, AacError> {
    let aot = bits(r, 5, "audioObjectType truncated")?;
    let aot = if aot == 31 { 32 + bits(r, 6, "audioObjectTypeExt truncated")? } else { aot };
    // At most 32 + 63 = 95.
    Ok(aot as u8)
}

/// samplingFrequencyIndex, or the explicit 24-bit samplingFrequency after index 0xF; with the
/// index when there is one.
fn sampling_frequency(r: &mut BitReader<'_>) -> Result<(u32, Option<u8>), AacError> {
    let index = bits(r, 4, "samplingFrequencyIndex truncated")?;
    let frequency = match index {
        0xf => bits(r, 24, "samplingFrequency truncated")?,
        _ => *SAMPLING_FREQUENCIES
            .get(index as usize)
            .ok_or(AacError::Bad("samplingFrequencyIndex is reserved (0xD or 0xE)"))?,
    };
    if frequency == 0 {
        return Err(AacError::Bad("samplingFrequency is 0"));
    }
    Ok((frequency, (index != 0xf).then_some(index as u8)))
}

/// The samplingFrequencyIndex of `rate`, if the table has it.
pub fn frequency_index(rate: u32) -> Option<u8> {
    SAMPLING_FREQUENCIES.iter().position(|&f| f == rate).map(|i| i as u8)
}

/// The samplingFrequencyIndex of `rate`, or of the nearest rate the table has (for an explicit
/// rate, which ADTS cannot state).
pub fn nearest_frequency_index(rate: u32) -> u8 {
    let nearest = SAMPLING_FREQUENCIES.iter().enumerate().min_by_key(|&(_, &f)| f.abs_diff(rate)).map(|(i, _)| i);
    nearest.unwrap_or(3) as u8
}

/// The start of an AudioSpecificConfig (§1.6.2.1): the AAC core it describes, and the SBR/PS
/// extension explicit signalling puts around it (§1.6.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// The outer audioObjectType: 5 (SBR) or 29 (PS) with explicit signalling, else the core's.
    pub outer_object_type: u8,
    /// The core's audioObjectType (AAC Main 1, LC 2, LTP 4, …).
    pub object_type: u8,
    /// The core's sampling frequency, and its index when the config gives one.
    pub sampling_frequency: u32,
    pub sampling_frequency_index: Option<u8>,
    pub channel_configuration: u8,
    /// The extension's (output) sampling frequency with explicit SBR/PS signalling.
    pub extension_frequency: Option<u32>,
}

/// Reads the [`CoreConfig`] at the start of an AudioSpecificConfig, leaving `r` after it.
fn read_core(r: &mut BitReader<'_>) -> Result<CoreConfig, AacError> {
    let outer_object_type = audio_object_type(r)?;
    let (frequency, frequency_index) = sampling_frequency(r)?;
    let channel_configuration = bits(r, 4, "channelConfiguration truncated")? as u8;
    let (object_type, extension_frequency) = if matches!(outer_object_type, AOT_SBR | AOT_PS) {
        let (extension, _) = sampling_frequency(r)?;
        (audio_object_type(r)?, Some(extension))
    } else {
        (outer_object_type, None)
    };
    Ok(CoreConfig {
        outer_object_type,
        object_type,
        sampling_frequency: frequency,
        sampling_frequency_index: frequency_index,
        channel_configuration,
        extension_frequency,
    })
}

/// The AAC core an AudioSpecificConfig describes: what an ADTS header repeats (ISO/IEC 13818-7
/// §6.2.1 describes the core; ADTS carries HE-AAC by implicit signalling).
pub fn core_config(asc: &[u8]) -> Result<CoreConfig, AacError> {
    read_core(&mut BitReader::new(asc))
}

/// Why an audio object type other than AAC Main/LC/LTP (with or without SBR/PS) is refused.
fn unsupported_object_type(aot: u8) -> AacError {
    AacError::Bad(match aot {
        0 => "audio object type 0 (null)",
        3 => "audio object type 3 (AAC SSR) is not supported",
        5 | 29 => "SBR/PS signalled inside SBR/PS",
        6 => "audio object type 6 (AAC Scalable) is not supported",
        7 => "audio object type 7 (TwinVQ) is not supported",
        8 => "audio object type 8 (CELP) is not supported",
        9 => "audio object type 9 (HVXC) is not supported",
        17 => "audio object type 17 (ER AAC LC) is not supported",
        19 => "audio object type 19 (ER AAC LTP) is not supported",
        20 => "audio object type 20 (ER AAC Scalable) is not supported",
        22 => "audio object type 22 (ER BSAC) is not supported",
        23 => "audio object type 23 (ER AAC LD) is not supported",
        32..=34 => "MPEG-1/2 Layer 1/2/3 audio object types (32-34) are not supported",
        39 => "audio object type 39 (ER AAC ELD) is not supported",
        42 => "audio object type 42 (USAC / xHE-AAC) is not supported",
        _ => "audio object type is not AAC Main, LC or LTP (optionally with SBR/PS)",
    })
}

/// Channel count of a channelConfiguration (§1.6.3.5, Table 1.19, with the 7.1 and 22.2 layouts
/// of later amendments).
fn channel_count(channel_configuration: u32) -> Result<u8, AacError> {
    match channel_configuration {
        0 => Err(AacError::Bad("channelConfiguration 0 (layout in a program_config_element) is not supported")),
        1..=6 => Ok(channel_configuration as u8),
        7 | 12 | 14 => Ok(8),
        11 => Ok(7),
        13 => Ok(24),
        _ => Err(AacError::Bad("channelConfiguration is reserved")),
    }
}

/// Parses an AudioSpecificConfig into [`AudioParams`].
///
/// Explicit SBR/PS signalling (an outer audioObjectType of 5 or 29, §1.6.5.2) reports
/// `mp4a.40.5` / `mp4a.40.29` at the extension (output) sampling frequency, with
/// `frame_samples` scaled to match so that one raw frame still spans the same time. Backward-
/// compatible signalling (a trailing syncExtensionType 0x2B7 after an AAC-LC config) is reported
/// as the AAC-LC stream it declares itself to be (RFC 6381 §3.3 takes the first object type).
pub fn parse_asc(asc: Bytes) -> Result<AudioParams, AacError> {
    let mut r = BitReader::new(&asc);
    let core = read_core(&mut r)?;
    let (outer_aot, aot, core_rate) = (core.outer_object_type, core.object_type, core.sampling_frequency);
    let (channel_configuration, extension_rate) = (u32::from(core.channel_configuration), core.extension_frequency);
    if !matches!(aot, AOT_AAC_MAIN | AOT_AAC_LC | AOT_AAC_LTP) {
        return Err(unsupported_object_type(aot));
    }

    // GASpecificConfig (§4.4.1, Table 4.1).
    let frame_length_flag = bits(&mut r, 1, "frameLengthFlag truncated")? == 1;
    if bits(&mut r, 1, "dependsOnCoreCoder truncated")? == 1 {
        bits(&mut r, 14, "coreCoderDelay truncated")?;
    }
    bits(&mut r, 1, "extensionFlag truncated")?;
    let mut channels = channel_count(channel_configuration)?;
    let core_frame_samples: u32 = if frame_length_flag { 960 } else { 1024 };

    let (codec_aot, sample_rate, frame_samples) = match extension_rate {
        None => (aot, core_rate, core_frame_samples),
        Some(extension_rate) => {
            // SBR runs at twice the core rate, or at the core rate when downsampled (§4.6.18.2).
            let frame_samples = if extension_rate == core_rate {
                core_frame_samples
            } else if u64::from(extension_rate) == 2 * u64::from(core_rate) {
                2 * core_frame_samples
            } else {
                return Err(AacError::Bad("SBR extension sampling frequency is neither the core rate nor twice it"));
            };
            if outer_aot == AOT_PS && channels == 1 {
                // Parametric stereo decodes a mono core into two channels (§8.6.4).
                channels = 2;
            }
            (outer_aot, extension_rate, frame_samples)
        }
    };

    Ok(AudioParams { codec: format!("mp4a.40.{codec_aot}"), sample_rate, channels, frame_samples, asc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &'static [u8]) -> Result<(String, u32, u8, u32), AacError> {
        parse_asc(Bytes::from_static(bytes)).map(|p| (p.codec, p.sample_rate, p.channels, p.frame_samples))
    }

    fn ok(codec: &str, sample_rate: u32, channels: u8, frame_samples: u32) -> Result<(String, u32, u8, u32), AacError> {
        Ok((codec.to_owned(), sample_rate, channels, frame_samples))
    }

    #[test]
    fn ffmpeg_aac_lc_configs() {
        // From ffmpeg 5.1's native encoder (esds DecoderSpecificInfo and FLV sequence header); each
        // ends in ffmpeg's backward-compatible SBR signal with sbrPresentFlag = 0.
        assert_eq!(parse(&[0x12, 0x10, 0x56, 0xe5, 0x00]), ok("mp4a.40.2", 44100, 2, 1024));
        assert_eq!(parse(&[0x11, 0x88, 0x56, 0xe5, 0x00]), ok("mp4a.40.2", 48000, 1, 1024));
        assert_eq!(parse(&[0x13, 0xb0, 0x56, 0xe5, 0x00]), ok("mp4a.40.2", 22050, 6, 1024));
        assert_eq!(parse(&[0x10, 0x38, 0x56, 0xe5, 0x00]), ok("mp4a.40.2", 96000, 8, 1024));
        // The plain two-byte form most RTMP encoders send.
        assert_eq!(parse(&[0x12, 0x10]), ok("mp4a.40.2", 44100, 2, 1024));
    }

    #[test]
    fn keeps_the_raw_config() {
        let asc = Bytes::from_static(&[0x11, 0x90]);
        assert_eq!(parse_asc(asc.clone()).unwrap().asc, asc);
    }

    #[test]
    fn frame_length_flag_selects_960_samples() {
        // AAC-LC, 48 kHz, stereo, frameLengthFlag = 1.
        assert_eq!(parse(&[0x11, 0x94]), ok("mp4a.40.2", 48000, 2, 960));
    }

    #[test]
    fn other_aac_family_object_types() {
        // AAC Main and AAC LTP, 48 kHz stereo.
        assert_eq!(parse(&[0x09, 0x90]), ok("mp4a.40.1", 48000, 2, 1024));
        assert_eq!(parse(&[0x21, 0x90]), ok("mp4a.40.4", 48000, 2, 1024));
    }

    #[test]
    fn explicit_24_bit_sampling_frequency() {
        // AAC-LC, index 0xF, 44 100 Hz (0x00AC44), stereo: 00010 1111 000000001010110001000100 0010 000.
        assert_eq!(parse(&[0x17, 0x80, 0x56, 0x22, 0x10, 0x00]), ok("mp4a.40.2", 44100, 2, 1024));
        assert_eq!(parse(&[0x17, 0x80, 0x00, 0x00, 0x10, 0x00]), Err(AacError::Bad("samplingFrequency is 0")));
    }

    #[test]
    fn escaped_audio_object_type() {
        // 31 then 6 bits of 10 → object type 42 (USAC): refused by name, not misread.
        assert_eq!(
            parse(&[0xf9, 0x51, 0x10, 0x00]),
            Err(AacError::Bad("audio object type 42 (USAC / xHE-AAC) is not supported"))
        );
        assert_eq!(parse(&[0xf8]), Err(AacError::Bad("audioObjectTypeExt truncated")));
    }

    #[test]
    fn explicit_sbr_reports_he_aac_at_the_output_rate() {
        // AOT 5, core 24 kHz (6), stereo, extension 48 kHz (3), AOT 2, GASpecificConfig 000:
        // 00101 0110 0010 0011 00010 000.
        assert_eq!(parse(&[0x2b, 0x11, 0x88, 0x00]), ok("mp4a.40.5", 48000, 2, 2048));
        // Downsampled SBR: extension rate equal to the core rate.
        assert_eq!(parse(&[0x2b, 0x13, 0x08, 0x00]), ok("mp4a.40.5", 24000, 2, 1024));
        // Extension rate unrelated to the core rate.
        assert!(parse(&[0x2b, 0x12, 0x08, 0x00]).is_err());
    }

    #[test]
    fn explicit_ps_reports_he_aac_v2_in_stereo() {
        // AOT 29, core 24 kHz, mono, extension 48 kHz, AOT 2: 11101 0110 0001 0011 00010 000.
        assert_eq!(parse(&[0xeb, 0x09, 0x88, 0x00]), ok("mp4a.40.29", 48000, 2, 2048));
    }

    #[test]
    fn refusals_say_why() {
        // channelConfiguration 0: the layout lives in a program_config_element.
        assert_eq!(
            parse(&[0x12, 0x00]),
            Err(AacError::Bad("channelConfiguration 0 (layout in a program_config_element) is not supported"))
        );
        assert_eq!(parse(&[0x12, 0x78]), Err(AacError::Bad("channelConfiguration is reserved")));
        assert_eq!(parse(&[0x16, 0x90]), Err(AacError::Bad("samplingFrequencyIndex is reserved (0xD or 0xE)")));
        assert_eq!(parse(&[0x19, 0x90]), Err(AacError::Bad("audio object type 3 (AAC SSR) is not supported")));
        assert_eq!(parse(&[0xb9, 0x90]), Err(AacError::Bad("audio object type 23 (ER AAC LD) is not supported")));
        assert_eq!(parse(&[]), Err(AacError::Bad("audioObjectType truncated")));
    }

    #[test]
    fn truncation_never_panics() {
        let configs: [&[u8]; 3] =
            [&[0x12, 0x10, 0x56, 0xe5, 0x00], &[0x17, 0x80, 0x56, 0x22, 0x10, 0x00], &[0xeb, 0x09, 0x88, 0x00]];
        for config in configs {
            for len in 0..config.len() {
                let _ = parse_asc(Bytes::copy_from_slice(&config[..len]));
            }
        }
        // Cut inside the fields that are read, a config is refused.
        assert_eq!(parse(&[0x12]), Err(AacError::Bad("samplingFrequencyIndex truncated")));
        assert_eq!(parse(&[0xf8, 0x42]), Err(AacError::Bad("channelConfiguration truncated")));
        assert_eq!(parse(&[0xeb, 0x09, 0x88]), Err(AacError::Bad("extensionFlag truncated")));
        for byte in 0..=255u8 {
            let _ = parse_asc(Bytes::copy_from_slice(&[byte]));
            let _ = parse_asc(Bytes::copy_from_slice(&[byte, byte.wrapping_mul(37), 0xff]));
        }
    }
}
