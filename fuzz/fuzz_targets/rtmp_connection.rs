//! A whole RTMP connection, as the listener runs each it accepts (handshake, rml_rtmp's session
//! behind the chunk guard, `connect`, `publish` through a gate, FLV parsing, the timeline), fed
//! bytes from a socket in memory that then closes. It must end, and never panic: a panic here is
//! one the daemon would have to contain by ending a publisher's connection.
//!
//! The first byte's top bit says whether a valid handshake (C0, C1, C2; RTMP spec §5.2) comes
//! first, so that the rest reaches the chunk layer, or whether the bytes are the handshake too;
//! its low three bits are a count of split sizes that follow it (how the socket delivers the rest,
//! as in `chunk_guard`). Stream key `fuzz` is accepted; any other is refused.
#![no_main]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ladderd::config::RtmpConfig;
use ladderd::ingest::admission::{Admission, AdmissionLimits};
use ladderd::ingest::rtmp::{Connection, Limits};
use ladderd::ingest::{Publish, PublishGate, Refusal};
use ladderd::media::Arrival;
use ladderd::metrics::Metrics;
use ladderd::rate::TokenBucket;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The client's bytes, handed out in pieces, then end of stream; whatever is written is dropped.
struct Script {
    data: Vec<u8>,
    at: usize,
    pieces: Vec<u8>,
    next: usize,
}

impl AsyncRead for Script {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let left = self.data.len() - self.at;
        let piece = match self.pieces.get(self.next % self.pieces.len().max(1)).copied().unwrap_or(0) {
            0 => left,
            n => usize::from(n).min(left),
        };
        self.next += 1;
        let n = piece.min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Accepts key `fuzz` into a queue whose receiver `drain` empties, as a channel would.
struct Gate {
    media: mpsc::Sender<Arrival>,
}

impl PublishGate for Gate {
    fn begin(&self, _app: &str, stream_key: &str, _peer: SocketAddr) -> Result<Publish, Refusal> {
        if stream_key != "fuzz" {
            return Err(Refusal::UnknownKey);
        }
        let limit = 64 << 20;
        Ok(Publish {
            channel: "fuzz".into(),
            media: self.media.clone(),
            kick: CancellationToken::new(),
            activity: Arc::new(AtomicU64::new(0)),
            timed_text: TokenBucket::new(10.0, 20),
            queue_budget: Arc::new(tokio::sync::Semaphore::new(limit)),
            queue_limit: limit,
            finished: Default::default(),
        })
    }
}

/// C0 (version 3), C1 and C2: 1536 bytes each, time and zero fields 0 (the simple handshake,
/// which rml_rtmp accepts; it does not check C2's content).
fn handshake() -> Vec<u8> {
    let mut out = vec![3u8];
    out.extend((0..1536u32).map(|i| if i < 8 { 0 } else { (i * 7) as u8 }));
    out.extend((0..1536u32).map(|i| (i * 13) as u8));
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    // A paused clock: deadlines and the lingering after a refusal pass at once when nothing else
    // can run, so an input costs its work, not its timeouts.
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime")
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else { return };
    let count = usize::from(first & 7).min(rest.len());
    let (pieces, bytes) = rest.split_at(count);
    let mut data = if first & 0x80 != 0 { handshake() } else { Vec::new() };
    data.extend_from_slice(bytes);
    let socket = Script { data, at: 0, pieces: pieces.to_vec(), next: 0 };

    let config = RtmpConfig::default();
    // One registry for every run: building one costs more than most inputs.
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    let metrics = METRICS.get_or_init(|| Arc::new(Metrics::new())).clone();
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1935);
    let Some(ticket) = Admission::new(AdmissionLimits::new(&config), metrics.clone()).admit(peer.ip()) else {
        panic!("a first connection is always admitted");
    };
    runtime().block_on(async move {
        let (media, mut queued) = mpsc::channel(64);
        let drain = tokio::spawn(async move { while queued.recv().await.is_some() {} });
        let gate = Gate { media };
        let conn =
            Connection::new(Box::new(socket), peer, Limits::new(&config), metrics, CancellationToken::new(), ticket);
        // Its end, good or bad, is the daemon's business; that it ends without a panic is ours.
        let _ = conn.run(&gate).await;
        drop(gate);
        drain.await.expect("the drain task");
    });
});
