//! ladderd: RTMP in, an ABR ladder transcoded once per channel, low-latency HLS out.

pub mod config;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod package;
pub mod transcode;
