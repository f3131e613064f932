//! Packaging: fMP4/CMAF fragments, MPEG-TS, ID3, segmentation and playlist text (all sans-IO),
//! each rendition's window over time ([`window`], pure), and the publisher that applies it to the
//! store ([`publisher`], the one part of this folder with effects).

#[cfg(test)]
mod fixture;
pub mod fmp4;
pub mod id3;
pub mod playlist;
pub mod publisher;
pub mod segmenter;
pub mod ts;
pub mod window;
