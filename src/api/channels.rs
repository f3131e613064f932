//! `GET /api/v1/channels`, `GET /api/v1/channels/{channel}`: what each channel is doing (publisher,
//! source, ingest rate, renditions, transcode backends); `POST /api/v1/channels/{channel}/disconnect`:
//! sends the live publisher away. See `docs/api.md`.
//!
//! As with timed metadata, the token is checked first, then the method, then the channel, so that
//! a caller without the token learns nothing about channels.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Serialize;

use super::{Admin, error, no_content, text, unknown_channel};
use crate::channel::PostError;
use crate::http::Body;

const LIST: &str = "/api/v1/channels";
const DISCONNECT: &str = "/disconnect";

/// What a channels path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    List,
    One(&'a str),
    Disconnect(&'a str),
}

/// The target of `path`, if it is a channels path other than metadata.
pub fn target_of(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix(LIST)?;
    if rest.is_empty() {
        return Some(Target::List);
    }
    let rest = rest.strip_prefix('/')?;
    let valid = |channel: &str| !channel.is_empty() && !channel.contains('/');
    match rest.strip_suffix(DISCONNECT) {
        Some(channel) => valid(channel).then_some(Target::Disconnect(channel)),
        None => valid(rest).then_some(Target::One(rest)),
    }
}

impl Admin {
    pub(super) fn channels_api(&self, method: &Method, headers: &HeaderMap, target: Target<'_>) -> Response<Body> {
        if let Some(refused) = self.refusal(headers) {
            return refused;
        }
        let (allowed, allow) = match target {
            Target::List | Target::One(_) => (method == Method::GET || method == Method::HEAD, "GET, HEAD"),
            Target::Disconnect(_) => (method == Method::POST, "POST"),
        };
        if !allowed {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{method} is not allowed here; use {allow}"),
            );
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        match target {
            Target::List => json(&self.channels.statuses()),
            Target::One(channel) => match self.channels.status(channel) {
                Some(status) => json(&status),
                None => unknown_channel(channel),
            },
            Target::Disconnect(channel) => match self.channels.disconnect(channel) {
                Ok(()) => no_content(),
                Err(PostError::UnknownChannel) => unknown_channel(channel),
                Err(PostError::NotLive) => error(
                    StatusCode::CONFLICT,
                    "channel_not_live",
                    &format!("channel {channel:?} is not live; there is no publisher to disconnect"),
                ),
            },
        }
    }
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => text(StatusCode::OK, "application/json", body.into()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("cannot encode the status: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;

    use super::*;
    use crate::channel::Channels;
    use crate::config::Config;
    use crate::ingest::PublishGate;
    use crate::metrics::Metrics;
    use crate::store::Store;

    const TOKEN: &str = "s3cret-token";

    struct Fixture {
        admin: Admin,
        channels: Arc<Channels>,
        metrics: Arc<Metrics>,
    }

    fn fixture(admin: &str) -> Fixture {
        let text = format!(
            "admin: {{ listen: \"127.0.0.1:0\"{admin} }}\n\
             ladders:\n  default:\n    - {{ name: \"360p\", width: 640, height: 360, video_bitrate: 700000 }}\n\
             channels:\n  - {{ name: \"demo\", stream_key: \"demo-key\", ladder: \"default\" }}\n\
             \x20 - {{ name: \"other\", stream_key: \"other-key\", ladder: \"default\" }}\n"
        );
        let config = Arc::new(Config::parse(&text, Path::new("test.yaml")).expect("test config"));
        let metrics = Arc::new(Metrics::new());
        let channels = Arc::new(Channels::new(config.clone(), Arc::new(Store::new()), metrics.clone()));
        Fixture { admin: Admin::new(metrics.clone(), channels.clone(), &config), channels, metrics }
    }

    fn with_token() -> Fixture {
        fixture(&format!(", token: \"{TOKEN}\""))
    }

    fn request(method: Method, path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        req.body(Full::default()).expect("valid request")
    }

    async fn send(admin: &Admin, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Value) {
        let (parts, body) = admin.handle(req).await.into_parts();
        let body = body.collect().await.unwrap_or_else(|e: Infallible| match e {}).to_bytes();
        assert_eq!(parts.headers[header::CACHE_CONTROL], "no-store");
        let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("JSON body") };
        (parts.status, parts.headers, json)
    }

    async fn get(admin: &Admin, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = send(admin, request(Method::GET, path, Some(TOKEN))).await;
        (status, body)
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:50123".parse().expect("address")
    }

    #[test]
    fn channel_paths_are_parsed_strictly() {
        assert_eq!(target_of("/api/v1/channels"), Some(Target::List));
        assert_eq!(target_of("/api/v1/channels/demo"), Some(Target::One("demo")));
        assert_eq!(target_of("/api/v1/channels/demo/disconnect"), Some(Target::Disconnect("demo")));
        assert_eq!(target_of("/api/v1/channels/disconnect"), Some(Target::One("disconnect")));
        assert_eq!(target_of("/api/v1/channels/"), None);
        assert_eq!(target_of("/api/v1/channels//disconnect"), None);
        assert_eq!(target_of("/api/v1/channels/a/b"), None);
        assert_eq!(target_of("/api/v1/channelsx"), None);
    }

    #[tokio::test]
    async fn list_shows_every_configured_channel_offline() {
        let f = with_token();
        let (status, body) = get(&f.admin, "/api/v1/channels").await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = body.as_array().expect("array").iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["demo", "other"]);
        let demo = &body[0];
        assert_eq!(demo["live"], false);
        assert!(demo["publisher"].is_null() && demo["source"].is_null() && demo["backend"].is_null(), "{demo}");
        assert_eq!(demo["ingest"]["bytes_total"], 0);
        assert!(demo["ingest"]["bitrate_bps"].is_null());
        assert_eq!(demo["renditions"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn one_channel_shows_its_publisher_while_live_and_unknown_is_404() {
        let f = with_token();
        let publish = f.channels.begin("live", "demo-key", peer()).expect("publish accepted");
        let (status, body) = get(&f.admin, "/api/v1/channels/demo").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&body["name"], &body["live"]), (&Value::from("demo"), &Value::from(true)));
        assert_eq!(body["publisher"]["peer"], "192.0.2.7:50123");
        let since = body["publisher"]["since"].as_str().expect("since");
        let b = since.as_bytes();
        assert!(b.len() >= 20 && b[4] == b'-' && b[10] == b'T' && since.ends_with('Z'), "RFC 3339 UTC: {since}");
        assert!(body["source"].is_null(), "no media yet: {body}");
        assert_eq!(get(&f.admin, "/api/v1/channels/other").await.1["live"], false);

        let (status, body) = get(&f.admin, "/api/v1/channels/nope").await;
        assert_eq!((status, &body["error"]), (StatusCode::NOT_FOUND, &Value::from("unknown_channel")));
        drop(publish);
        f.channels.drain();
    }

    #[tokio::test]
    async fn ingest_and_request_rates_come_from_the_two_latest_samples() {
        let f = with_token();
        let t0 = Instant::now();
        f.channels.sample_rates(t0);
        let body = get(&f.admin, "/api/v1/channels/demo").await.1;
        assert!(body["ingest"]["bitrate_bps"].is_null());
        assert_eq!(body["origin"], serde_json::json!({ "requests_total": 0, "requests_per_second": null }));
        f.metrics.ingest_bytes.with_label_values(&["demo"]).inc_by(250_000);
        // What the origin counts for viewers of `demo`, over several routes.
        f.metrics.origin_requests.with_label_values(&["demo", "part"]).inc_by(20);
        f.metrics.origin_requests.with_label_values(&["demo", "blocking_playlist"]).inc_by(5);
        f.channels.sample_rates(t0 + Duration::from_secs(2));
        let body = get(&f.admin, "/api/v1/channels/demo").await.1;
        assert_eq!(
            body["ingest"],
            serde_json::json!({ "bytes_total": 250_000, "bitrate_bps": 1_000_000, "frame_rate": null, "keyframe_interval_seconds": null })
        );
        assert_eq!(body["origin"], serde_json::json!({ "requests_total": 25, "requests_per_second": 12.5 }));
        let other = get(&f.admin, "/api/v1/channels/other").await.1;
        assert_eq!(other["ingest"]["bitrate_bps"], 0);
        assert_eq!(other["origin"], serde_json::json!({ "requests_total": 0, "requests_per_second": 0.0 }));
    }

    #[tokio::test]
    async fn status_needs_the_token_401_403_and_disabled_403() {
        let f = with_token();
        for path in ["/api/v1/channels", "/api/v1/channels/demo", "/api/v1/channels/nope"] {
            let (status, headers, body) = send(&f.admin, request(Method::GET, path, None)).await;
            assert_eq!((status, &body["error"]), (StatusCode::UNAUTHORIZED, &Value::from("unauthorized")));
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            let (status, _, body) = send(&f.admin, request(Method::GET, path, Some("wrong"))).await;
            assert_eq!((status, &body["error"]), (StatusCode::FORBIDDEN, &Value::from("forbidden")));
        }
        let disabled = fixture("");
        let (status, _, body) = send(&disabled.admin, request(Method::GET, "/api/v1/channels", Some(TOKEN))).await;
        assert_eq!((status, &body["error"]), (StatusCode::FORBIDDEN, &Value::from("api_disabled")));
        let path = "/api/v1/channels/demo/disconnect";
        let (status, _, body) = send(&disabled.admin, request(Method::POST, path, Some(TOKEN))).await;
        assert_eq!((status, &body["error"]), (StatusCode::FORBIDDEN, &Value::from("api_disabled")));
    }

    #[tokio::test]
    async fn wrong_methods_are_405_with_allow() {
        let f = with_token();
        let (status, headers, _) = send(&f.admin, request(Method::POST, "/api/v1/channels", Some(TOKEN))).await;
        assert_eq!((status, headers[header::ALLOW].to_str().ok()), (StatusCode::METHOD_NOT_ALLOWED, Some("GET, HEAD")));
        let path = "/api/v1/channels/demo/disconnect";
        let (status, headers, _) = send(&f.admin, request(Method::GET, path, Some(TOKEN))).await;
        assert_eq!((status, headers[header::ALLOW].to_str().ok()), (StatusCode::METHOD_NOT_ALLOWED, Some("POST")));
    }

    #[tokio::test]
    async fn disconnect_unknown_is_404_and_not_live_is_409() {
        let f = with_token();
        let post =
            |channel: &str| request(Method::POST, &format!("/api/v1/channels/{channel}/disconnect"), Some(TOKEN));
        let (status, _, body) = send(&f.admin, post("nope")).await;
        assert_eq!((status, &body["error"]), (StatusCode::NOT_FOUND, &Value::from("unknown_channel")));
        let (status, _, body) = send(&f.admin, post("demo")).await;
        assert_eq!((status, &body["error"]), (StatusCode::CONFLICT, &Value::from("channel_not_live")));
        let (status, _, _) = send(&f.admin, request(Method::POST, "/api/v1/channels/demo/disconnect", None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn disconnect_cancels_the_live_publishers_kick_token_204() {
        let f = with_token();
        let publish = f.channels.begin("live", "demo-key", peer()).expect("publish accepted");
        let other = f.channels.begin("live", "other-key", peer()).expect("publish accepted");
        let path = "/api/v1/channels/demo/disconnect";
        let (status, _, body) = send(&f.admin, request(Method::POST, path, Some(TOKEN))).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        assert!(publish.kick.is_cancelled());
        assert!(!other.kick.is_cancelled(), "only the named channel is kicked");
        drop((publish, other));
        f.channels.drain();
    }

    #[tokio::test]
    async fn readyz_waits_for_the_gpu_probe_and_fails_while_draining() {
        let f = fixture("");
        let readyz = || request(Method::GET, "/readyz", None);
        let (status, _, body) = send(&f.admin, readyz()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, serde_json::json!({ "status": "not_ready", "reason": "gpu_probe_pending" }));
        f.admin.mark_gpu_probed();
        let (status, headers, body) = send(&f.admin, readyz()).await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!({ "status": "ready" })));
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        f.channels.drain();
        let (status, _, body) = send(&f.admin, readyz()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, serde_json::json!({ "status": "not_ready", "reason": "draining" }));
    }
}
