//! Packaging, sans-IO: fMP4/CMAF fragments, segmentation and playlist text.

#[cfg(test)]
mod fixture;
pub mod fmp4;
pub mod id3;
pub mod playlist;
pub mod segmenter;
pub mod ts;
