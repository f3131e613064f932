//! H.264 bitstream facts the pipeline needs without a decoder: SPS fields, avcC records,
//! Annex B ⇄ length-prefixed conversion (ITU-T H.264 §7.3, ISO/IEC 14496-15 §5.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::VideoParams;
use super::bits;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AvcError {
    #[error("avcC record truncated or malformed: {0}")]
    BadRecord(&'static str),
    #[error("SPS malformed: {0}")]
    BadSps(&'static str),
    #[error("no SPS/PPS found")]
    MissingParameterSets,
}

/// NAL unit types (ITU-T H.264 Table 7-1) this module acts on.
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// The fields of a sequence parameter set that packaging and planning need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    /// The byte after profile_idc (constraint_set0..5 flags and reserved bits).
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// Cropped luma size in pixels.
    pub width: u32,
    pub height: u32,
}

/// What [`parse_sps`] reports plus the format fields the avcC High-profile trailer repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpsDetail {
    sps: Sps,
    chroma_format_idc: u8,
    bit_depth_luma_minus8: u8,
    bit_depth_chroma_minus8: u8,
}

/// The SPS's reader: [`bits::BitReader`] with each failed read reported as [`AvcError::BadSps`] naming
/// the field.
struct SpsReader<'a>(bits::BitReader<'a>);

impl<'a> SpsReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self(bits::BitReader::new(data))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, AvcError> {
        self.0.flag().ok_or(AvcError::BadSps(what))
    }

    /// u(n) for n ≤ 32.
    fn bits(&mut self, n: u32, what: &'static str) -> Result<u32, AvcError> {
        self.0.bits(n).ok_or(AvcError::BadSps(what))
    }

    /// ue(v), §9.1.
    fn ue(&mut self, what: &'static str) -> Result<u32, AvcError> {
        self.0.ue().ok_or(AvcError::BadSps(what))
    }

    /// ue(v) with an upper bound from the semantics in §7.4.2.1.1.
    fn ue_max(&mut self, max: u32, what: &'static str) -> Result<u32, AvcError> {
        let value = self.ue(what)?;
        if value > max {
            return Err(AvcError::BadSps(what));
        }
        Ok(value)
    }

    /// se(v), §9.1.1.
    fn se(&mut self, what: &'static str) -> Result<i64, AvcError> {
        self.0.se().ok_or(AvcError::BadSps(what))
    }
}

/// Why the NAL units of a length-prefixed sample cannot be walked to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NalLengthError {
    /// The sample ends inside a length prefix.
    CutShort,
    /// A length runs past the end of the sample.
    Overrun { len: usize },
}

/// The NAL units of an AVC sample: each a `length_size`-byte big-endian length, then the unit
/// (ISO/IEC 14496-15 §5.3.2). Ends after the first error.
pub struct LengthPrefixedNals<'a> {
    data: &'a [u8],
    length_size: usize,
}

impl<'a> LengthPrefixedNals<'a> {
    /// `length_size` is the avcC's lengthSizeMinusOne + 1: 1, 2 or 4.
    pub fn new(data: &'a [u8], length_size: usize) -> Self {
        Self { data, length_size }
    }
}

impl<'a> Iterator for LengthPrefixedNals<'a> {
    type Item = Result<&'a [u8], NalLengthError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let Some((prefix, rest)) = self.data.split_at_checked(self.length_size) else {
            self.data = &[];
            return Some(Err(NalLengthError::CutShort));
        };
        let len = prefix.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b));
        let Some((nal, rest)) = rest.split_at_checked(len) else {
            self.data = &[];
            return Some(Err(NalLengthError::Overrun { len }));
        };
        self.data = rest;
        Some(Ok(nal))
    }
}

/// Strips emulation_prevention_three_byte (§7.4.1: a 0x03 after two zero bytes) to give the RBSP.
fn nal_to_rbsp(payload: &[u8]) -> Vec<u8> {
    let mut rbsp = Vec::with_capacity(payload.len());
    let mut zeros = 0usize;
    for &byte in payload {
        if zeros >= 2 && byte == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        rbsp.push(byte);
    }
    rbsp
}

/// profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists
/// (§7.3.2.1.1).
fn has_chroma_format_fields(profile_idc: u8) -> bool {
    matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135)
}

/// scaling_list() of §7.3.2.1.1.1, read only to get past it.
fn skip_scaling_list(r: &mut SpsReader<'_>, size: usize) -> Result<(), AvcError> {
    let mut last_scale: i64 = 8;
    let mut next_scale: i64 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta_scale = r.se("delta_scale truncated or invalid")?;
            if !(-128..=127).contains(&delta_scale) {
                return Err(AvcError::BadSps("delta_scale outside -128..127"));
            }
            next_scale = (last_scale + delta_scale + 256).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

fn parse_sps_detail(nal: &[u8]) -> Result<SpsDetail, AvcError> {
    let (&header, payload) = nal.split_first().ok_or(AvcError::BadSps("empty NAL unit"))?;
    if header & 0x1f != NAL_SPS {
        return Err(AvcError::BadSps("NAL unit type is not 7 (SPS)"));
    }
    let rbsp = nal_to_rbsp(payload);
    let mut r = SpsReader::new(&rbsp);

    let profile_idc = r.bits(8, "profile_idc truncated")? as u8;
    let constraint_flags = r.bits(8, "constraint flags truncated")? as u8;
    let level_idc = r.bits(8, "level_idc truncated")? as u8;
    r.ue_max(31, "seq_parameter_set_id truncated or above 31")?;

    // Defaults when absent (§7.4.2.1.1): 4:2:0, 8-bit.
    let mut chroma_format_idc = 1u32;
    let mut separate_colour_plane = false;
    let mut bit_depth_luma_minus8 = 0u32;
    let mut bit_depth_chroma_minus8 = 0u32;
    if has_chroma_format_fields(profile_idc) {
        chroma_format_idc = r.ue_max(3, "chroma_format_idc truncated or above 3")?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag("separate_colour_plane_flag truncated")?;
        }
        bit_depth_luma_minus8 = r.ue_max(6, "bit_depth_luma_minus8 truncated or above 6")?;
        bit_depth_chroma_minus8 = r.ue_max(6, "bit_depth_chroma_minus8 truncated or above 6")?;
        r.flag("qpprime_y_zero_transform_bypass_flag truncated")?;
        if r.flag("seq_scaling_matrix_present_flag truncated")? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag("seq_scaling_list_present_flag truncated")? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }

    r.ue_max(12, "log2_max_frame_num_minus4 truncated or above 12")?;
    match r.ue_max(2, "pic_order_cnt_type truncated or above 2")? {
        0 => {
            r.ue_max(12, "log2_max_pic_order_cnt_lsb_minus4 truncated or above 12")?;
        }
        1 => {
            r.flag("delta_pic_order_always_zero_flag truncated")?;
            r.se("offset_for_non_ref_pic truncated or invalid")?;
            r.se("offset_for_top_to_bottom_field truncated or invalid")?;
            let cycle = r.ue_max(255, "num_ref_frames_in_pic_order_cnt_cycle truncated or above 255")?;
            for _ in 0..cycle {
                r.se("offset_for_ref_frame truncated or invalid")?;
            }
        }
        _ => {}
    }
    r.ue("max_num_ref_frames truncated or invalid")?;
    r.flag("gaps_in_frame_num_value_allowed_flag truncated")?;
    let width_in_mbs = u64::from(r.ue("pic_width_in_mbs_minus1 truncated or invalid")?) + 1;
    let height_in_map_units = u64::from(r.ue("pic_height_in_map_units_minus1 truncated or invalid")?) + 1;
    let frame_mbs_only = r.flag("frame_mbs_only_flag truncated")?;
    if !frame_mbs_only {
        r.flag("mb_adaptive_frame_field_flag truncated")?;
    }
    r.flag("direct_8x8_inference_flag truncated")?;
    let (mut crop_left, mut crop_right, mut crop_top, mut crop_bottom) = (0u64, 0u64, 0u64, 0u64);
    if r.flag("frame_cropping_flag truncated")? {
        crop_left = u64::from(r.ue("frame_crop_left_offset truncated or invalid")?);
        crop_right = u64::from(r.ue("frame_crop_right_offset truncated or invalid")?);
        crop_top = u64::from(r.ue("frame_crop_top_offset truncated or invalid")?);
        crop_bottom = u64::from(r.ue("frame_crop_bottom_offset truncated or invalid")?);
    }

    // Equations 7-13 to 7-19 and Table 6-1: field-coded streams count map units in field pairs,
    // and the crop unit follows the chroma subsampling.
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let (sub_width_c, sub_height_c): (u64, u64) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let (crop_unit_x, crop_unit_y) =
        if chroma_array_type == 0 { (1, field_factor) } else { (sub_width_c, sub_height_c * field_factor) };
    let coded_width = width_in_mbs * 16;
    let coded_height = height_in_map_units * field_factor * 16;
    let crop_x = (crop_left + crop_right) * crop_unit_x;
    let crop_y = (crop_top + crop_bottom) * crop_unit_y;
    if crop_x >= coded_width || crop_y >= coded_height {
        return Err(AvcError::BadSps("frame cropping removes the whole picture"));
    }
    let width = u32::try_from(coded_width - crop_x).map_err(|_| AvcError::BadSps("picture width too large"))?;
    let height = u32::try_from(coded_height - crop_y).map_err(|_| AvcError::BadSps("picture height too large"))?;

    Ok(SpsDetail {
        sps: Sps { profile_idc, constraint_flags, level_idc, width, height },
        // Bounded above by ue_max, so these narrowings are exact.
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma_minus8: bit_depth_luma_minus8 as u8,
        bit_depth_chroma_minus8: bit_depth_chroma_minus8 as u8,
    })
}

/// Parses an SPS NAL unit (including its 1-byte NAL header, with emulation-prevention bytes).
pub fn parse_sps(nal: &[u8]) -> Result<Sps, AvcError> {
    parse_sps_detail(nal).map(|detail| detail.sps)
}

/// `avc1.PPCCLL` (RFC 6381 §3.3).
pub fn codec_string(sps: &Sps) -> String {
    format!("avc1.{:02X}{:02X}{:02X}", sps.profile_idc, sps.constraint_flags, sps.level_idc)
}

/// The parameter sets of an AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcRecord {
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// NAL unit length size in bytes (1, 2 or 4).
    pub length_size: u8,
}

/// Reads `count` parameter sets, each a 16-bit length then the NAL unit (§5.3.3.1.1).
fn read_parameter_sets<'a>(
    rest: &mut &'a [u8],
    count: usize,
    truncated: &'static str,
) -> Result<Vec<&'a [u8]>, AvcError> {
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<2>().ok_or(AvcError::BadRecord(truncated))?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 {
            return Err(AvcError::BadRecord("zero-length parameter set"));
        }
        let (set, tail) = tail.split_at_checked(len).ok_or(AvcError::BadRecord(truncated))?;
        sets.push(set);
        *rest = tail;
    }
    Ok(sets)
}

/// Parses an AVCDecoderConfigurationRecord.
pub fn parse_avcc(record: &[u8]) -> Result<AvcRecord, AvcError> {
    // configurationVersion, AVCProfileIndication, profile_compatibility, AVCLevelIndication,
    // reserved(6) + lengthSizeMinusOne(2), reserved(3) + numOfSequenceParameterSets(5).
    let (header, mut rest) =
        record.split_first_chunk::<6>().ok_or(AvcError::BadRecord("shorter than its 6-byte header"))?;
    let [version, _, _, _, length_byte, sps_byte] = *header;
    if version != 1 {
        return Err(AvcError::BadRecord("configurationVersion is not 1"));
    }
    // §5.3.3.1.2: lengthSizeMinusOne is 0, 1 or 3.
    let length_size = match length_byte & 0x03 {
        0 => 1,
        1 => 2,
        3 => 4,
        _ => return Err(AvcError::BadRecord("lengthSizeMinusOne is 2 (3-byte lengths are not allowed)")),
    };
    let sps = read_parameter_sets(&mut rest, usize::from(sps_byte & 0x1f), "SPS list truncated")?;
    let (&pps_count, tail) = rest.split_first().ok_or(AvcError::BadRecord("numOfPictureParameterSets missing"))?;
    rest = tail;
    let pps = read_parameter_sets(&mut rest, usize::from(pps_count), "PPS list truncated")?;
    // What follows (the High-profile chroma/bit-depth trailer and SPS extensions) repeats what
    // the SPS says; nothing here needs it.
    Ok(AvcRecord {
        sps: sps.into_iter().map(Bytes::copy_from_slice).collect(),
        pps: pps.into_iter().map(Bytes::copy_from_slice).collect(),
        length_size,
    })
}

/// Builds an AVCDecoderConfigurationRecord with 4-byte NAL lengths from parameter sets.
pub fn build_avcc(sps: &[Bytes], pps: &[Bytes]) -> Result<Bytes, AvcError> {
    let first_sps = sps.first().ok_or(AvcError::MissingParameterSets)?;
    if pps.is_empty() {
        return Err(AvcError::MissingParameterSets);
    }
    let sps_count = u8::try_from(sps.len())
        .ok()
        .filter(|&n| n <= 31)
        .ok_or(AvcError::BadRecord("more than 31 SPS (numOfSequenceParameterSets is 5 bits)"))?;
    let pps_count = u8::try_from(pps.len()).map_err(|_| AvcError::BadRecord("more than 255 PPS"))?;
    if sps.iter().chain(pps).any(|set| set.is_empty() || set.len() > usize::from(u16::MAX)) {
        return Err(AvcError::BadRecord("parameter set empty or longer than 65535 bytes"));
    }
    let detail = parse_sps_detail(first_sps)?;
    let profile_idc = detail.sps.profile_idc;

    let total: usize = sps.iter().chain(pps).map(|set| 2 + set.len()).sum();
    let mut out = BytesMut::with_capacity(7 + total + 4);
    out.put_u8(1); // configurationVersion
    out.put_u8(profile_idc);
    out.put_u8(detail.sps.constraint_flags);
    out.put_u8(detail.sps.level_idc);
    out.put_u8(0xfc | 3); // reserved '111111', lengthSizeMinusOne = 3
    out.put_u8(0xe0 | sps_count); // reserved '111', numOfSequenceParameterSets
    for set in sps {
        out.put_u16(set.len() as u16);
        out.put_slice(set);
    }
    out.put_u8(pps_count);
    for set in pps {
        out.put_u16(set.len() as u16);
        out.put_slice(set);
    }
    // §5.3.3.1.1: these profiles repeat chroma format and bit depths after the PPS list.
    if matches!(profile_idc, 100 | 110 | 122 | 144) {
        out.put_u8(0xfc | detail.chroma_format_idc);
        out.put_u8(0xf8 | detail.bit_depth_luma_minus8);
        out.put_u8(0xf8 | detail.bit_depth_chroma_minus8);
        out.put_u8(0); // numOfSequenceParameterSetExt
    }
    Ok(out.freeze())
}

/// [`VideoParams`] from an avcC record (as carried by an RTMP AVC sequence header).
///
/// The record handed on is always rebuilt from the parameter sets, never the source's bytes:
/// [`parse_avcc`] tolerates what follows the PPS list (stray bytes, a trailer on a profile that
/// has none), but the packager's avcC reader refuses such a record and the init segment would
/// come out empty. The rebuilt record has 4-byte NAL lengths, which is what frames are converted to.
pub fn params_from_avcc(record: Bytes) -> Result<VideoParams, AvcError> {
    let parsed = parse_avcc(&record)?;
    let first_sps = parsed.sps.first().ok_or(AvcError::MissingParameterSets)?;
    if parsed.pps.is_empty() {
        return Err(AvcError::MissingParameterSets);
    }
    let sps = parse_sps(first_sps)?;
    let avcc = build_avcc(&parsed.sps, &parsed.pps)?;
    Ok(VideoParams { avcc, width: sps.width, height: sps.height, codec: codec_string(&sps) })
}

/// [`VideoParams`] from Annex B parameter sets (as libx264 writes its global header).
pub fn params_from_annexb(data: &[u8]) -> Result<VideoParams, AvcError> {
    let mut sps = Vec::new();
    let mut pps = Vec::new();
    for nal in annexb_nals(data) {
        match nal.first().map(|header| header & 0x1f) {
            Some(NAL_SPS) => sps.push(Bytes::copy_from_slice(nal)),
            Some(NAL_PPS) => pps.push(Bytes::copy_from_slice(nal)),
            _ => {}
        }
    }
    let first_sps = sps.first().ok_or(AvcError::MissingParameterSets)?;
    let parsed = parse_sps(first_sps)?;
    let avcc = build_avcc(&sps, &pps)?;
    Ok(VideoParams { avcc, width: parsed.width, height: parsed.height, codec: codec_string(&parsed) })
}

/// Index of the next three-byte start code prefix `00 00 01` at or after `from`.
fn find_start_code(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(&third) = data.get(i + 2) {
        if third > 1 {
            // No start code can begin at i, i + 1 or i + 2 when this byte is neither 0 nor 1.
            i += 3;
        } else if third == 1 && data.get(i..i + 2) == Some(&[0, 0]) {
            return Some(i);
        } else {
            i += 1;
        }
    }
    None
}

/// The NAL units of an Annex B byte stream, start codes removed.
pub fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut nals = Vec::new();
    let Some(mut start) = find_start_code(data, 0) else {
        return nals;
    };
    loop {
        let payload_start = start + 3;
        let next = find_start_code(data, payload_start);
        let end = next.unwrap_or(data.len());
        if let Some(nal) = data.get(payload_start..end) {
            // Annex B §B.2: trailing_zero_8bits (and the first byte of a 4-byte start code)
            // belong to no NAL unit; a NAL unit never ends in a zero byte (§7.4.2.10).
            if let Some(last) = nal.iter().rposition(|&b| b != 0) {
                nals.push(&nal[..=last]);
            }
        }
        match next {
            Some(n) => start = n,
            None => return nals,
        }
    }
}

/// Converts an Annex B access unit to 4-byte length-prefixed NAL units, dropping SPS/PPS/AUD
/// NAL units (they live in the avcC record).
pub fn annexb_to_length_prefixed(data: &[u8]) -> Bytes {
    let nals = annexb_nals(data);
    let mut out = BytesMut::with_capacity(data.len() + 4 * nals.len());
    for nal in nals {
        let kind = nal.first().map_or(0, |header| header & 0x1f);
        if matches!(kind, NAL_SPS | NAL_PPS | NAL_AUD) {
            continue;
        }
        // A NAL unit of 4 GiB cannot be described by a 4-byte length; nothing real is that big.
        let Ok(len) = u32::try_from(nal.len()) else { continue };
        out.put_u32(len);
        out.put_slice(nal);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // SPS NAL units written by libx264 (ffmpeg 5.1) for `testsrc2`; the sizes and profiles are
    // what ffprobe reports for the same streams.
    const SPS_HIGH_1280X720: &str = "6764001facd9405005bb0110000003001000000303c0f1831960";
    const SPS_HIGH_1920X1080: &str = "67640028acd940780227e5c044000003000400000300f03c60c658";
    const SPS_HIGH_1920X1080_INTERLACED: &str = "67640028acd94078044fde0220000003002000000783e2c5b2c0";
    const SPS_CONSTRAINED_BASELINE_854X480: &str = "6742c01fd900d83de6f0110000030001000003003c0f183248";
    const SPS_MAIN_1000X562: &str = "674d401feca07e093cb1180880000003008000001e078c18cb";
    const SPS_HIGH10_1000X562: &str = "676e001fa6cd940fc12796230110000003001000000303c0f1831960";
    const SPS_HIGH422_322X241: &str = "677a000dbcd94150878884210000030001000003003c0f142996";
    const SPS_HIGH444_1001X563: &str = "67f4001f919b281f824f111d08000003000800000301e078c18cb0";
    const SPS_MONOCHROME_1001X563: &str = "6764001ff36503f049e223a10000030001000003003c0f183196";
    const PPS_HIGH: &str = "68ebe3cb22c0";
    const PPS_BASELINE: &str = "68cb83cb20";
    /// The avcC box payload ffmpeg's mp4 muxer wrote for the same 1280x720 High encode.
    const AVCC_HIGH_1280X720: &str =
        "0164001fffe1001a6764001facd9405005bb0110000003001000000303c0f183196001000668ebe3cb22c0fdf8f800";
    /// libx264's global header (SPS, PPS, version SEI) for the 1280x720 High encode.
    const X264_HEADERS: &[u8] = include_bytes!("testdata/x264_headers_1280x720_high.h264");

    #[test]
    fn x264_sps_fields() {
        let cases: [(&str, u8, u8, u8, u32, u32, &str); 9] = [
            (SPS_HIGH_1280X720, 100, 0x00, 31, 1280, 720, "avc1.64001F"),
            (SPS_HIGH_1920X1080, 100, 0x00, 40, 1920, 1080, "avc1.640028"),
            (SPS_HIGH_1920X1080_INTERLACED, 100, 0x00, 40, 1920, 1080, "avc1.640028"),
            (SPS_CONSTRAINED_BASELINE_854X480, 66, 0xc0, 31, 854, 480, "avc1.42C01F"),
            (SPS_MAIN_1000X562, 77, 0x40, 31, 1000, 562, "avc1.4D401F"),
            (SPS_HIGH10_1000X562, 110, 0x00, 31, 1000, 562, "avc1.6E001F"),
            (SPS_HIGH422_322X241, 122, 0x00, 13, 322, 241, "avc1.7A000D"),
            (SPS_HIGH444_1001X563, 244, 0x00, 31, 1001, 563, "avc1.F4001F"),
            (SPS_MONOCHROME_1001X563, 100, 0x00, 31, 1001, 563, "avc1.64001F"),
        ];
        for (sps_hex, profile_idc, constraint_flags, level_idc, width, height, codec) in cases {
            let sps = parse_sps(&hex(sps_hex)).unwrap_or_else(|e| panic!("{sps_hex}: {e}"));
            assert_eq!(sps, Sps { profile_idc, constraint_flags, level_idc, width, height }, "{sps_hex}");
            assert_eq!(codec_string(&sps), codec, "{sps_hex}");
        }
    }

    #[test]
    fn x264_sps_format_fields() {
        let detail = parse_sps_detail(&hex(SPS_HIGH10_1000X562)).unwrap();
        assert_eq!((detail.chroma_format_idc, detail.bit_depth_luma_minus8, detail.bit_depth_chroma_minus8), (1, 2, 2));
        let detail = parse_sps_detail(&hex(SPS_HIGH422_322X241)).unwrap();
        assert_eq!(detail.chroma_format_idc, 2);
        let detail = parse_sps_detail(&hex(SPS_HIGH444_1001X563)).unwrap();
        assert_eq!(detail.chroma_format_idc, 3);
        let detail = parse_sps_detail(&hex(SPS_MONOCHROME_1001X563)).unwrap();
        assert_eq!(detail.chroma_format_idc, 0);
    }

    /// Writes SPS syntax elements, for the branches no x264 setting produces.
    #[derive(Default)]
    struct SpsWriter {
        bits: Vec<bool>,
    }

    impl SpsWriter {
        fn u(&mut self, n: u32, value: u64) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push((value >> i) & 1 == 1);
            }
            self
        }
        fn ue(&mut self, value: u32) -> &mut Self {
            let code = u64::from(value) + 1;
            let len = 64 - code.leading_zeros();
            self.u(len - 1, 0).u(len, code)
        }
        fn se(&mut self, value: i32) -> &mut Self {
            let k = if value > 0 { 2 * value - 1 } else { -2 * value };
            self.ue(k as u32)
        }
        /// The NAL unit: header, RBSP with trailing bits, emulation prevention applied.
        fn nal(&mut self) -> Vec<u8> {
            self.bits.push(true);
            while !self.bits.len().is_multiple_of(8) {
                self.bits.push(false);
            }
            let rbsp: Vec<u8> =
                self.bits.chunks(8).map(|byte| byte.iter().fold(0u8, |acc, &b| (acc << 1) | u8::from(b))).collect();
            let mut nal = vec![0x67];
            let mut zeros = 0;
            for byte in rbsp {
                if zeros >= 2 && byte <= 3 {
                    nal.push(3);
                    zeros = 0;
                }
                zeros = if byte == 0 { zeros + 1 } else { 0 };
                nal.push(byte);
            }
            nal
        }
    }

    #[test]
    fn sps_with_scaling_lists_poc_type_1_and_field_coding() {
        let mut w = SpsWriter::default();
        w.u(8, 100).u(8, 0).u(8, 30).ue(0);
        w.ue(1).ue(0).ue(0).u(1, 0); // 4:2:0, 8-bit, no transform bypass
        w.u(1, 1); // seq_scaling_matrix_present_flag
        // List 0 (4x4): one delta of -8 makes nextScale 0, which ends the list after one read.
        w.u(1, 1).se(-8);
        // Lists 1..5 absent; list 6 (8x8): 64 explicit deltas.
        w.u(5, 0).u(1, 1);
        for j in 0..64 {
            w.se(if j % 2 == 0 { 3 } else { -2 });
        }
        w.u(1, 0); // list 7 absent
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(1).u(1, 0).se(-2).se(1).ue(3).se(2).se(-1).se(300); // pic_order_cnt_type 1
        w.ue(2).u(1, 0); // max_num_ref_frames, gaps
        w.ue(44).ue(17); // 45 MBs wide, 18 map units (field pairs) high
        w.u(1, 0).u(1, 1).u(1, 1); // frame_mbs_only 0, mb_adaptive, direct_8x8
        w.u(1, 1).ue(1).ue(2).ue(0).ue(2); // crop: left 1, right 2, bottom 2 (units 2 x 4)
        w.u(1, 0); // no VUI
        let sps = parse_sps(&w.nal()).unwrap();
        assert_eq!(sps, Sps { profile_idc: 100, constraint_flags: 0, level_idc: 30, width: 720 - 6, height: 576 - 8 });
    }

    #[test]
    fn sps_separate_colour_planes_crop_in_luma_samples() {
        let mut w = SpsWriter::default();
        w.u(8, 244).u(8, 0).u(8, 40).ue(3);
        w.ue(3).u(1, 1).ue(0).ue(0).u(1, 0); // 4:4:4 as three colour planes
        w.u(1, 1);
        for i in 0..12 {
            // Every list present; the 12 lists of 4:4:4 must all be skipped.
            w.u(1, 1);
            for _ in 0..if i < 6 { 16 } else { 64 } {
                w.se(1);
            }
        }
        w.ue(2).ue(2); // pic_order_cnt_type 2
        w.ue(1).u(1, 0).ue(119).ue(67).u(1, 1).u(1, 1);
        w.u(1, 1).ue(0).ue(1).ue(0).ue(3);
        w.u(1, 0);
        let sps = parse_sps(&w.nal()).unwrap();
        assert_eq!((sps.profile_idc, sps.width, sps.height), (244, 1920 - 1, 1088 - 3));
    }

    #[test]
    fn sps_refuses_out_of_range_fields() {
        let mut w = SpsWriter::default();
        w.u(8, 100).u(8, 0).u(8, 30).ue(0).ue(4);
        assert_eq!(parse_sps(&w.nal()), Err(AvcError::BadSps("chroma_format_idc truncated or above 3")));

        let mut w = SpsWriter::default();
        w.u(8, 66).u(8, 0).u(8, 30).ue(0).ue(0).ue(3);
        assert_eq!(parse_sps(&w.nal()), Err(AvcError::BadSps("pic_order_cnt_type truncated or above 2")));

        // Cropping more than the coded picture.
        let mut w = SpsWriter::default();
        w.u(8, 66).u(8, 0).u(8, 30).ue(0).ue(0).ue(2).ue(1).u(1, 0).ue(0).ue(0).u(1, 1).u(1, 1);
        w.u(1, 1).ue(4).ue(4).ue(0).ue(0).u(1, 0);
        assert_eq!(parse_sps(&w.nal()), Err(AvcError::BadSps("frame cropping removes the whole picture")));

        // An Exp-Golomb code longer than 32 bits.
        let mut nal = hex("6742c01f");
        nal.extend([0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x80]);
        assert_eq!(parse_sps(&nal), Err(AvcError::BadSps("seq_parameter_set_id truncated or above 31")));

        assert_eq!(parse_sps(&hex(PPS_HIGH)), Err(AvcError::BadSps("NAL unit type is not 7 (SPS)")));
        assert_eq!(parse_sps(&[]), Err(AvcError::BadSps("empty NAL unit")));
    }

    #[test]
    fn sps_truncated_anywhere_is_an_error_not_a_panic() {
        for sps_hex in [SPS_HIGH_1280X720, SPS_HIGH444_1001X563, SPS_CONSTRAINED_BASELINE_854X480] {
            let sps = hex(sps_hex);
            let full = parse_sps(&sps).unwrap();
            for len in 0..sps.len() {
                // A prefix either fails or, once it holds every field read, gives the same answer.
                if let Ok(partial) = parse_sps(&sps[..len]) {
                    assert_eq!(partial, full);
                }
            }
            assert!(parse_sps(&sps[..6]).is_err());
        }
    }

    #[test]
    fn sps_garbage_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let mut nal: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = nal.first_mut() {
                *first = 0x67;
            }
            let _ = parse_sps(&nal);
            let _ = parse_avcc(&nal);
            let _ = annexb_nals(&nal);
        }
    }

    #[test]
    fn length_prefixed_nal_units_are_walked_to_the_first_error() {
        let units: Vec<_> = LengthPrefixedNals::new(&[0, 2, 0x65, 0xAA, 0, 1, 0x06], 2).collect();
        assert_eq!(units, [Ok(&[0x65, 0xAA][..]), Ok(&[0x06][..])]);
        let units: Vec<_> = LengthPrefixedNals::new(&[1, 0x09, 0, 0, 0], 1).collect();
        // Zero lengths are empty units, which callers skip or refuse.
        assert_eq!(units, [Ok(&[0x09][..]), Ok(&[][..]), Ok(&[][..]), Ok(&[][..])]);
        let units: Vec<_> = LengthPrefixedNals::new(&[0, 0, 0, 9, 0x65], 4).collect();
        assert_eq!(units, [Err(NalLengthError::Overrun { len: 9 })]);
        let units: Vec<_> = LengthPrefixedNals::new(&[0, 0, 0], 4).collect();
        assert_eq!(units, [Err(NalLengthError::CutShort)], "an error ends the walk");
    }

    #[test]
    fn emulation_prevention_bytes_are_removed() {
        assert_eq!(nal_to_rbsp(&[0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03]), [0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(nal_to_rbsp(&[0x00, 0x03, 0x00, 0x00, 0x00, 0x03]), [0, 3, 0, 0, 0]);
    }

    #[test]
    fn build_avcc_matches_ffmpeg_for_high_profile() {
        let avcc = build_avcc(&[Bytes::from(hex(SPS_HIGH_1280X720))], &[Bytes::from(hex(PPS_HIGH))]).unwrap();
        assert_eq!(avcc.as_ref(), hex(AVCC_HIGH_1280X720).as_slice());
    }

    #[test]
    fn build_avcc_trailer_only_for_the_profiles_that_carry_it() {
        let build = |sps: &str, pps: &str| build_avcc(&[Bytes::from(hex(sps))], &[Bytes::from(hex(pps))]).unwrap();
        let baseline = build(SPS_CONSTRAINED_BASELINE_854X480, PPS_BASELINE);
        let sps_len = SPS_CONSTRAINED_BASELINE_854X480.len() / 2;
        assert_eq!(baseline.len(), 6 + 2 + sps_len + 1 + 2 + PPS_BASELINE.len() / 2);
        assert_eq!(baseline[..6], [1, 66, 0xc0, 31, 0xff, 0xe1]);

        let high10 = build(SPS_HIGH10_1000X562, PPS_HIGH);
        assert_eq!(high10[high10.len() - 4..], [0xfd, 0xfa, 0xfa, 0x00]);
        let high422 = build(SPS_HIGH422_322X241, PPS_HIGH);
        assert_eq!(high422[high422.len() - 4..], [0xfe, 0xf8, 0xf8, 0x00]);
        // High 4:4:4 Predictive (244) is not among the profiles of §5.3.3.1.1 that carry the trailer.
        let high444 = build(SPS_HIGH444_1001X563, PPS_HIGH);
        assert_eq!(high444.len(), 6 + 2 + SPS_HIGH444_1001X563.len() / 2 + 1 + 2 + PPS_HIGH.len() / 2);
    }

    #[test]
    fn build_then_parse_round_trips() {
        let sps = vec![Bytes::from(hex(SPS_HIGH_1920X1080)), Bytes::from(hex(SPS_HIGH_1280X720))];
        let pps = vec![Bytes::from(hex(PPS_HIGH)), Bytes::from(hex(PPS_BASELINE))];
        let record = parse_avcc(&build_avcc(&sps, &pps).unwrap()).unwrap();
        assert_eq!(record, AvcRecord { sps, pps, length_size: 4 });
    }

    #[test]
    fn build_avcc_refuses_what_it_cannot_describe() {
        let sps = [Bytes::from(hex(SPS_HIGH_1280X720))];
        let pps = [Bytes::from(hex(PPS_HIGH))];
        assert_eq!(build_avcc(&[], &pps), Err(AvcError::MissingParameterSets));
        assert_eq!(build_avcc(&sps, &[]), Err(AvcError::MissingParameterSets));
        assert!(matches!(build_avcc(&vec![sps[0].clone(); 32], &pps), Err(AvcError::BadRecord(_))));
        assert!(matches!(build_avcc(&[sps[0].clone(), Bytes::new()], &pps), Err(AvcError::BadRecord(_))));
        assert!(matches!(build_avcc(&pps, &pps), Err(AvcError::BadSps(_))));
    }

    #[test]
    fn parse_avcc_reads_ffmpeg_record() {
        let record = parse_avcc(&hex(AVCC_HIGH_1280X720)).unwrap();
        assert_eq!(record.sps, [Bytes::from(hex(SPS_HIGH_1280X720))]);
        assert_eq!(record.pps, [Bytes::from(hex(PPS_HIGH))]);
        assert_eq!(record.length_size, 4);
    }

    #[test]
    fn parse_avcc_refuses_malformed_records() {
        let good = hex(AVCC_HIGH_1280X720);
        let mut version_0 = good.clone();
        version_0[0] = 0;
        assert_eq!(parse_avcc(&version_0), Err(AvcError::BadRecord("configurationVersion is not 1")));
        let mut three_byte_lengths = good.clone();
        three_byte_lengths[4] = 0xfe;
        assert!(matches!(parse_avcc(&three_byte_lengths), Err(AvcError::BadRecord(_))));
        // Every prefix that cuts into the parameter sets is refused; the trailer is optional.
        let end_of_pps = good.len() - 4;
        for len in 0..end_of_pps {
            assert!(matches!(parse_avcc(&good[..len]), Err(AvcError::BadRecord(_))), "length {len}");
        }
        assert!(parse_avcc(&good[..end_of_pps]).is_ok());
    }

    #[test]
    fn params_from_avcc_gives_the_canonical_record() {
        let record = Bytes::from(hex(AVCC_HIGH_1280X720));
        let params = params_from_avcc(record).unwrap();
        let parsed = parse_avcc(&params.avcc).unwrap();
        assert_eq!(params.avcc, build_avcc(&parsed.sps, &parsed.pps).unwrap());
        assert_eq!(parsed.sps, [Bytes::from(hex(SPS_HIGH_1280X720))]);
        assert_eq!(parsed.pps, [Bytes::from(hex(PPS_HIGH))]);
        assert_eq!((params.width, params.height, params.codec.as_str()), (1280, 720, "avc1.64001F"));
    }

    #[test]
    fn params_from_avcc_drops_trailing_garbage() {
        let canonical = hex(AVCC_HIGH_1280X720);
        for garbage in [&[0xff][..], &[0x00, 0x01], &[0xde, 0xad, 0xbe]] {
            let mut record = canonical.clone();
            record.extend_from_slice(garbage);
            let params = params_from_avcc(Bytes::from(record)).unwrap();
            assert_eq!(params.avcc.as_ref(), canonical.as_slice(), "garbage {garbage:02x?}");
        }
        // A Baseline record carries no trailer, so one that has a High-profile-like trailer loses it.
        let baseline =
            build_avcc(&[Bytes::from(hex(SPS_CONSTRAINED_BASELINE_854X480))], &[Bytes::from(hex(PPS_BASELINE))])
                .unwrap();
        let mut with_trailer = baseline.to_vec();
        with_trailer.extend_from_slice(&[0xfd, 0xf8, 0xf8, 0x00]);
        assert_eq!(params_from_avcc(Bytes::from(with_trailer)).unwrap().avcc, baseline);
    }

    #[test]
    fn params_from_avcc_rebuilds_short_length_records() {
        for length_size_minus_one in [0u8, 1] {
            let mut record = hex(AVCC_HIGH_1280X720);
            record[4] = 0xfc | length_size_minus_one;
            let params = params_from_avcc(Bytes::from(record)).unwrap();
            assert_eq!(params.avcc.as_ref(), hex(AVCC_HIGH_1280X720).as_slice());
            assert_eq!(parse_avcc(&params.avcc).unwrap().length_size, 4);
        }
    }

    #[test]
    fn params_from_avcc_needs_both_parameter_sets() {
        // One SPS, zero PPS.
        let mut no_pps = hex(AVCC_HIGH_1280X720);
        no_pps.truncate(6 + 2 + SPS_HIGH_1280X720.len() / 2);
        no_pps.push(0);
        assert_eq!(params_from_avcc(Bytes::from(no_pps)), Err(AvcError::MissingParameterSets));
        assert_eq!(
            params_from_avcc(Bytes::from_static(&[1, 100, 0, 31, 0xff, 0xe0, 0])),
            Err(AvcError::MissingParameterSets)
        );
    }

    #[test]
    fn params_from_x264_global_header() {
        let params = params_from_annexb(X264_HEADERS).unwrap();
        assert_eq!(params.avcc.as_ref(), hex(AVCC_HIGH_1280X720).as_slice());
        assert_eq!((params.width, params.height, params.codec.as_str()), (1280, 720, "avc1.64001F"));
        assert_eq!(params_from_annexb(&X264_HEADERS[..30]), Err(AvcError::MissingParameterSets));
        assert_eq!(params_from_annexb(b"\x00\x00\x01\x68\xeb"), Err(AvcError::MissingParameterSets));
        assert_eq!(params_from_annexb(&[]), Err(AvcError::MissingParameterSets));
    }

    #[test]
    fn annexb_nals_splits_on_3_and_4_byte_start_codes() {
        let nal_types: Vec<u8> = annexb_nals(X264_HEADERS).iter().map(|nal| nal[0] & 0x1f).collect();
        assert_eq!(nal_types, [7, 8, 6]);

        let stream = [
            0x00, 0x00, 0x00, 0x01, 0x09, 0xf0, // AUD, 4-byte start code
            0x00, 0x00, 0x01, // empty NAL unit
            0x00, 0x00, 0x01, 0x65, 0x88, 0x00, 0x00, 0x03, 0x01, 0x00, 0x00, // IDR, EPB kept, trailing zeros
            0x00, 0x00, 0x01, 0x06, 0x05, 0x01, 0x80,
        ];
        let nals = annexb_nals(&stream);
        assert_eq!(nals, [&[0x09, 0xf0][..], &[0x65, 0x88, 0x00, 0x00, 0x03, 0x01], &[0x06, 0x05, 0x01, 0x80]]);
        assert!(annexb_nals(&[0x65, 0x88, 0x84]).is_empty());
        assert!(annexb_nals(&[0, 0, 1]).is_empty());
    }

    #[test]
    fn annexb_to_length_prefixed_drops_parameter_sets_and_delimiters() {
        let mut au = vec![0, 0, 0, 1, 0x09, 0xf0];
        au.extend_from_slice(X264_HEADERS);
        au.extend_from_slice(&[0, 0, 1, 0x65, 0x88, 0x80, 0, 0, 0, 1, 0x41, 0x9a]);
        let out = annexb_to_length_prefixed(&au);
        let sei = annexb_nals(X264_HEADERS)[2];
        let mut expected = (sei.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(sei);
        expected.extend_from_slice(&[0, 0, 0, 3, 0x65, 0x88, 0x80, 0, 0, 0, 2, 0x41, 0x9a]);
        assert_eq!(out.as_ref(), expected.as_slice());
        assert!(annexb_to_length_prefixed(&[]).is_empty());
    }
}
