//! Test fixtures: real fragmented MP4 files ffmpeg wrote (see testdata/README.md), read back as
//! sample entries and samples for the packaging tests.

use bytes::Bytes;
use mp4_atom::{Any, Codec, Decode, Moov};

/// A sample of a fixture file: (dts, pts, keyframe, payload) in the file's timescale.
pub type FixtureSample = (i64, i64, bool, Bytes);

/// The sample entry, timescale and samples of a fragmented MP4 that ffmpeg wrote.
pub fn read_fixture(file: &'static [u8]) -> (Codec, u32, Vec<FixtureSample>) {
    let file = Bytes::from_static(file);
    let mut buf: &[u8] = &file;
    let (mut codec, mut timescale, mut trex) = (None, 0, None);
    let mut samples = Vec::new();
    while !buf.is_empty() {
        let at = file.len() - buf.len();
        match Any::decode(&mut buf).expect("box") {
            Any::Moov(Moov { trak, mvex, .. }) => {
                codec = trak[0].mdia.minf.stbl.stsd.codecs.first().cloned();
                timescale = trak[0].mdia.mdhd.timescale;
                trex = mvex.and_then(|m| m.trex.first().cloned());
            }
            Any::Moof(moof) => {
                let trex = trex.clone().expect("trex before moof");
                for traf in &moof.traf {
                    let mut dts = traf.tfdt.as_ref().expect("tfdt").base_media_decode_time as i64;
                    for trun in &traf.trun {
                        let mut pos = at + trun.data_offset.expect("data offset") as usize;
                        for e in trun.samples.iter() {
                            let size = e.size.or(traf.tfhd.default_sample_size).unwrap_or(trex.default_sample_size);
                            let duration = e
                                .duration
                                .or(traf.tfhd.default_sample_duration)
                                .unwrap_or(trex.default_sample_duration);
                            let flags = e.flags.or(traf.tfhd.default_sample_flags).unwrap_or(trex.default_sample_flags);
                            samples.push((
                                dts,
                                dts + e.cts.unwrap_or(0),
                                flags & 0x1_0000 == 0,
                                file.slice(pos..pos + size as usize),
                            ));
                            pos += size as usize;
                            dts += i64::from(duration);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (codec.expect("a sample entry"), timescale, samples)
}
