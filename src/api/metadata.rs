//! `POST /api/v1/channels/{channel}/metadata`: timed metadata for a live channel, in the manner
//! of Amazon IVS PutMetadata. The raw request body is the payload; the channel inserts it in
//! every rendition as an ID3 frame at the next video frame (see `docs/api.md`).
//!
//! Checks run in a fixed order — auth, method, channel, payload, rate, live — so that a caller
//! without the token learns nothing about channels, and only well-formed posts spend the
//! channel's rate.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::rate::Admission;
use super::{Admin, error, no_content, unknown_channel};
use crate::channel::PostError;
use crate::http::Body;

/// Largest payload accepted, in bytes (the IVS PutMetadata limit).
pub const MAX_PAYLOAD: usize = 1024;

const PREFIX: &str = "/api/v1/channels/";
const SUFFIX: &str = "/metadata";

/// The channel a metadata path names, if `path` is one.
pub fn channel_of(path: &str) -> Option<&str> {
    let channel = path.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (!channel.is_empty() && !channel.contains('/')).then_some(channel)
}

/// Why a request body is not a payload.
#[derive(Debug)]
enum PayloadError {
    TooLarge,
    Empty,
    NotUtf8,
    /// The body stream failed (client gone, malformed chunked encoding).
    Unreadable,
    /// The body did not arrive within [`BODY_TIMEOUT`].
    TimedOut,
}

/// How long a client has to send the (at most 1 KiB) body once the request head is in: a client
/// that trickles or stalls it must not hold the request, and its connection, open.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

impl Admin {
    pub(super) async fn post_metadata<B>(&self, req: Request<B>, channel: &str, now: Instant) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(refused) = self.refusal(req.headers()) {
            return refused;
        }
        if req.method() != Method::POST {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{} is not allowed here; use POST", req.method()),
            );
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        if !self.limits.knows(channel) {
            return unknown_channel(channel);
        }
        let (parts, body) = req.into_parts();
        let payload = match read_payload(&parts.headers, body).await {
            Ok(p) => p,
            Err(PayloadError::TooLarge) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    &format!("the payload is limited to {MAX_PAYLOAD} bytes"),
                );
            }
            Err(PayloadError::Empty) => {
                return error(StatusCode::BAD_REQUEST, "empty_payload", "the request body (the payload) is empty");
            }
            Err(PayloadError::NotUtf8) => {
                return error(StatusCode::BAD_REQUEST, "invalid_utf8", "the payload must be UTF-8 text");
            }
            Err(PayloadError::Unreadable) => {
                return error(StatusCode::BAD_REQUEST, "unreadable_body", "the request body could not be read");
            }
            Err(PayloadError::TimedOut) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    &format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
                );
            }
        };
        match self.limits.admit(channel, now) {
            Some(Admission::Admitted) => {}
            Some(Admission::Limited(wait)) => return rate_limited(channel, wait),
            None => return unknown_channel(channel),
        }
        match self.channels.post_metadata(channel, payload) {
            Ok(()) => no_content(),
            Err(PostError::UnknownChannel) => unknown_channel(channel),
            Err(PostError::NotLive) => error(
                StatusCode::CONFLICT,
                "channel_not_live",
                &format!("channel {channel:?} is not live; timed metadata needs a publish in progress"),
            ),
        }
    }
}

/// Reads the payload, never holding more than one body frame past `MAX_PAYLOAD` bytes.
async fn read_payload<B>(headers: &HeaderMap, body: B) -> Result<Bytes, PayloadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A declared length over the limit is refused before any of the body is read.
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_PAYLOAD as u64) {
        return Err(PayloadError::TooLarge);
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_PAYLOAD).collect())
        .await
        .map_err(|_| PayloadError::TimedOut)?;
    let payload = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(PayloadError::TooLarge),
        Err(_) => return Err(PayloadError::Unreadable),
    };
    if payload.is_empty() {
        return Err(PayloadError::Empty);
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(PayloadError::NotUtf8);
    }
    Ok(payload)
}

fn rate_limited(channel: &str, wait: Duration) -> Response<Body> {
    // Retry-After takes whole seconds (RFC 9110 §10.2.3); round up so a retry at that time
    // finds a token.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("channel {channel:?} is over its timed-metadata rate; retry in {secs} s"),
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http_body::Frame;
    use http_body_util::Full;

    use super::*;
    use crate::channel::Channels;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::store::Store;

    const TOKEN: &str = "s3cret-token";

    fn config(admin: &str) -> Config {
        let text = format!(
            "admin: {{ listen: \"127.0.0.1:0\"{admin} }}\n\
             ladders:\n  default:\n    - {{ name: \"360p\", width: 640, height: 360, video_bitrate: 700000 }}\n\
             channels:\n  - {{ name: \"demo\", stream_key: \"demo-key\", ladder: \"default\" }}\n\
             \x20 - {{ name: \"other\", stream_key: \"other-key\", ladder: \"default\" }}\n"
        );
        Config::parse(&text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("test config invalid: {e:?}"))
    }

    fn admin_with(admin_config: &str) -> (Admin, Arc<Metrics>) {
        let config = Arc::new(config(admin_config));
        let metrics = Arc::new(Metrics::new());
        let channels = Arc::new(Channels::new(config.clone(), Arc::new(Store::new()), metrics.clone()));
        (Admin::new(metrics.clone(), channels, &config), metrics)
    }

    fn admin() -> Admin {
        admin_with(&format!(", token: \"{TOKEN}\"")).0
    }

    fn post(channel: &str) -> http::request::Builder {
        Request::post(format!("/api/v1/channels/{channel}/metadata"))
    }

    fn authed(method: Method, channel: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(format!("/api/v1/channels/{channel}/metadata"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Full::new(body.into()))
            .expect("valid request")
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        /// The `error` code of a JSON error body.
        fn code(&self) -> String {
            assert_eq!(self.headers[header::CONTENT_TYPE], "application/json");
            let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON error body");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            v["error"].as_str().expect("error code").to_owned()
        }
    }

    async fn send<B>(admin: &Admin, req: Request<B>) -> Reply
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        reply(admin.handle(req).await).await
    }

    async fn send_at(admin: &Admin, req: Request<Full<Bytes>>, now: Instant) -> Reply {
        reply(admin.handle_at(req, now).await).await
    }

    async fn reply(resp: Response<Body>) -> Reply {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap_or_else(|e: Infallible| match e {}).to_bytes();
        assert_eq!(parts.headers[header::CACHE_CONTROL], "no-store");
        Reply { status: parts.status, headers: parts.headers, body }
    }

    /// A body that must never be read.
    struct Untouchable;

    impl http_body::Body for Untouchable {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            panic!("the body was read");
        }
    }

    /// A body whose stream fails, as when the client goes away mid-request.
    struct Broken;

    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(Err(std::io::ErrorKind::ConnectionReset.into())))
        }
    }

    #[test]
    fn only_metadata_paths_name_a_channel() {
        assert_eq!(channel_of("/api/v1/channels/demo/metadata"), Some("demo"));
        assert_eq!(channel_of("/api/v1/channels//metadata"), None);
        assert_eq!(channel_of("/api/v1/channels/a/b/metadata"), None);
        assert_eq!(channel_of("/api/v1/channels/demo/metadata/"), None);
        assert_eq!(channel_of("/api/v1/channels/demo"), None);
        assert_eq!(channel_of("/metrics"), None);
    }

    #[tokio::test]
    async fn metrics_and_healthz_need_no_token() {
        for admin in [admin(), admin_with("").0] {
            let r = send(&admin, Request::get("/metrics").body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
            let r = send(&admin, Request::get("/healthz").body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &br#"{"status":"ok"}"#[..]));
            let r = send(&admin, Request::post("/healthz").body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(
                (r.status, r.headers[header::ALLOW].to_str().ok()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("GET, HEAD"))
            );
            let r = send(&admin, Request::get("/nope").body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
        }
    }

    /// A body that never sends anything.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            std::task::Poll::Pending
        }
    }

    // Paused time: the five seconds pass as soon as nothing else can run.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_comes_is_a_408_after_the_body_timeout() {
        let admin = admin();
        let req = post("demo").header(header::AUTHORIZATION, format!("Bearer {TOKEN}")).body(Stalled).unwrap();
        let started = tokio::time::Instant::now();
        let r = send(&admin, req).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::REQUEST_TIMEOUT, "body_timeout"));
        assert!(started.elapsed() >= BODY_TIMEOUT);
    }

    #[tokio::test]
    async fn without_a_configured_token_the_api_is_disabled_403() {
        let (admin, _) = admin_with("");
        let r = send(&admin, authed(Method::POST, "demo", "hello")).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "api_disabled"));
        assert!(String::from_utf8_lossy(&r.body).contains("admin.token"));
    }

    #[tokio::test]
    async fn missing_or_malformed_authorization_is_401_with_www_authenticate() {
        let admin = admin();
        let bare = post("demo").body(Full::new(Bytes::from("hello"))).unwrap();
        let basic = post("demo").header(header::AUTHORIZATION, "Basic czNjcmV0").body(Full::default()).unwrap();
        let empty = post("demo").header(header::AUTHORIZATION, "Bearer ").body(Full::default()).unwrap();
        for req in [bare, basic, empty] {
            let r = send(&admin, req).await;
            assert_eq!((r.status, r.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
            assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }

    #[tokio::test]
    async fn a_wrong_token_is_403() {
        let admin = admin();
        let req = post("demo").header(header::AUTHORIZATION, "Bearer s3cret-tokeN").body(Full::default()).unwrap();
        let r = send(&admin, req).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
        assert!(!r.headers.contains_key(header::WWW_AUTHENTICATE));
    }

    #[tokio::test]
    async fn other_methods_are_405_with_allow_but_only_after_auth() {
        let admin = admin();
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            let r = send(&admin, authed(method.clone(), "demo", "hello")).await;
            assert_eq!((r.status, r.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
            assert_eq!(r.headers[header::ALLOW], "POST");
        }
        let r = send(&admin, Request::get("/api/v1/channels/demo/metadata").body(Full::default()).unwrap()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn unknown_channel_is_404_before_the_body_is_looked_at() {
        let admin = admin();
        let r = send(&admin, authed(Method::POST, "nope", vec![0xff; 5000])).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "unknown_channel"));
        let r = send(&admin, authed(Method::POST, "api%2Fx", "hello")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let req = Request::get("/api/v1/streams").body(Full::default()).unwrap();
        let r = send(&admin, req).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    }

    #[tokio::test]
    async fn empty_or_non_utf8_payloads_are_400() {
        let admin = admin();
        let r = send(&admin, authed(Method::POST, "demo", "")).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "empty_payload"));
        let r = send(&admin, authed(Method::POST, "demo", vec![b'o', b'k', 0xc3])).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_utf8"));
        let req = authed(Method::POST, "demo", "").map(|_| Broken);
        let r = send(&admin, req).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "unreadable_body"));
    }

    #[tokio::test]
    async fn payloads_over_1024_bytes_are_413_and_1024_is_accepted() {
        let admin = admin();
        let r = send(&admin, authed(Method::POST, "demo", "é".repeat(512).into_bytes())).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "1024 bytes passes every check before liveness");
        let r = send(&admin, authed(Method::POST, "demo", "a".repeat(1025).into_bytes())).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
        // A body larger than declared stops at the limit, too.
        let mut req = authed(Method::POST, "demo", "a".repeat(4096).into_bytes());
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(10));
        assert_eq!(send(&admin, req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_content_length_over_1024_is_413_without_reading_the_body() {
        let admin = admin();
        let mut req = authed(Method::POST, "demo", "").map(|_| Untouchable);
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(1025));
        let r = send(&admin, req).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    }

    #[tokio::test]
    async fn a_known_channel_that_is_not_live_is_409() {
        let admin = admin();
        let r = send(&admin, authed(Method::POST, "demo", r#"{"score":"1-0"}"#)).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::CONFLICT, "channel_not_live"));
    }

    #[tokio::test]
    async fn the_sixth_post_within_a_second_is_429_until_a_token_refills() {
        let admin = admin();
        let t0 = Instant::now();
        // Malformed posts spend nothing.
        for _ in 0..10 {
            assert_eq!(send_at(&admin, authed(Method::POST, "demo", ""), t0).await.status, StatusCode::BAD_REQUEST);
        }
        for _ in 0..5 {
            assert_eq!(send_at(&admin, authed(Method::POST, "demo", "hi"), t0).await.status, StatusCode::CONFLICT);
        }
        // Back to back, and 100 ms later (half a token refilled): still over.
        for t in [t0, t0 + Duration::from_millis(100)] {
            let r = send_at(&admin, authed(Method::POST, "demo", "hi"), t).await;
            assert_eq!((r.status, r.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
            assert_eq!(r.headers[header::RETRY_AFTER], "1");
        }
        // The limit is per channel.
        assert_eq!(send_at(&admin, authed(Method::POST, "other", "hi"), t0).await.status, StatusCode::CONFLICT);
        // One token back 200 ms after the burst (5 per second), and only one.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(send_at(&admin, authed(Method::POST, "demo", "hi"), t1).await.status, StatusCode::CONFLICT);
        assert_eq!(send_at(&admin, authed(Method::POST, "demo", "hi"), t1).await.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn retry_after_rounds_up_to_whole_seconds() {
        let (admin, _) = admin_with(&format!(", token: \"{TOKEN}\", metadata_rate: 0.4, metadata_burst: 1"));
        let t0 = Instant::now();
        assert_eq!(send_at(&admin, authed(Method::POST, "demo", "hi"), t0).await.status, StatusCode::CONFLICT);
        let r = send_at(&admin, authed(Method::POST, "demo", "hi"), t0).await;
        assert_eq!(
            (r.status, r.headers[header::RETRY_AFTER].to_str().ok()),
            (StatusCode::TOO_MANY_REQUESTS, Some("3"))
        );
    }

    #[tokio::test]
    async fn every_response_is_counted_in_http_requests() {
        let (admin, metrics) = admin_with(&format!(", token: \"{TOKEN}\""));
        let count = |route: &str, code: &str| metrics.http_requests.with_label_values(&["admin", route, code]).get();
        send(&admin, Request::get("/healthz").body(Full::default()).unwrap()).await;
        send(&admin, authed(Method::POST, "demo", "hi")).await;
        send(&admin, authed(Method::POST, "nope", "hi")).await;
        send(&admin, post("demo").body(Full::default()).unwrap()).await;
        send(&admin, Request::get("/nowhere").body(Full::default()).unwrap()).await;
        assert_eq!(count("healthz", "200"), 1);
        // Not live, unknown channel, no token.
        assert_eq!((count("metadata", "409"), count("metadata", "404"), count("metadata", "401")), (1, 1, 1));
        assert_eq!(count("other", "404"), 1);
        let timed = metrics.http_request_duration.with_label_values(&["admin", "metadata"]).get_sample_count();
        assert_eq!(timed, 3);
    }
}
