//! The admin listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for liveness and
//! readiness checks, channel status and disconnect (`/api/v1/channels[/{channel}]`), and the
//! timed-metadata API (`POST /api/v1/channels/{channel}/metadata`); see `docs/api.md`.

mod auth;
mod channels;
mod metadata;
mod rate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::channel::Channels;
use crate::config::Config;
use crate::http::Body;
use crate::metrics::Metrics;

pub struct Admin {
    metrics: Arc<Metrics>,
    channels: Arc<Channels>,
    limits: rate::ChannelLimits,
    /// The startup GPU probe has returned, so placing a channel no longer waits on it.
    gpu_probed: AtomicBool,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, channels: Arc<Channels>, config: &Config) -> Self {
        let limits = rate::ChannelLimits::new(
            config.channels.iter().map(|c| c.name.as_str()),
            config.admin.metadata_rate,
            config.admin.metadata_burst,
        );
        Self { metrics, channels, limits, gpu_probed: AtomicBool::new(false) }
    }

    /// Follows a reloaded configuration (the channels' is already in force): metadata limits for
    /// the channels now configured, and for `still_live` ones a reload removed while they were
    /// live (they take metadata until their publisher leaves). The token is read from the
    /// configuration on every request.
    pub fn configure(&self, config: &Config, still_live: &[String]) {
        self.limits.configure(
            config.channels.iter().map(|c| c.name.as_str()).chain(still_live.iter().map(String::as_str)),
            config.admin.metadata_rate,
            config.admin.metadata_burst,
        );
    }

    /// Marks the startup GPU probe as done; `/readyz` answers 503 until then.
    pub fn mark_gpu_probed(&self) {
        self.gpu_probed.store(true, Ordering::Release);
    }

    /// Checks the bearer token of an API request: the response refusing it, or `None` to go on.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        // `admin.token`; none disables the API.
        let config = self.channels.config();
        let Some(expected) = config.admin.token.as_deref() else {
            return Some(error(
                StatusCode::FORBIDDEN,
                "api_disabled",
                "the admin API is disabled; set admin.token in the configuration to enable it",
            ));
        };
        match auth::check(headers, expected) {
            auth::Credentials::Valid => None,
            auth::Credentials::Missing => {
                let mut resp =
                    error(StatusCode::UNAUTHORIZED, "unauthorized", "send the header 'Authorization: Bearer <token>'");
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(resp)
            }
            auth::Credentials::Wrong => {
                Some(error(StatusCode::FORBIDDEN, "forbidden", "the bearer token is not valid"))
            }
        }
    }

    /// `/readyz`: ready once the GPU probe is done, until shutdown begins. That the listener
    /// answers at all shows the listeners are bound.
    fn readyz(&self) -> Response<Body> {
        let reason = if self.channels.is_draining() {
            Some("draining")
        } else if !self.gpu_probed.load(Ordering::Acquire) {
            Some("gpu_probe_pending")
        } else {
            None
        };
        match reason {
            None => {
                // Quarantined GPUs do not make the daemon unready (the CPU or other GPUs take
                // their work); they are listed for whoever watches.
                let quarantined = self.channels.quarantined_gpus();
                let body = if quarantined.is_empty() {
                    r#"{"status":"ready"}"#.to_string()
                } else {
                    serde_json::json!({ "status": "ready", "quarantined_gpus": quarantined }).to_string()
                };
                text(StatusCode::OK, "application/json", body.into())
            }
            Some(reason) => {
                let body = serde_json::json!({ "status": "not_ready", "reason": reason }).to_string();
                text(StatusCode::SERVICE_UNAVAILABLE, "application/json", body.into())
            }
        }
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.handle_at(req, Instant::now()).await
    }

    /// [`Admin::handle`] with the rate limiter's clock reading passed in.
    async fn handle_at<B>(&self, req: Request<B>, now: Instant) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (route, started) = (route_of(req.uri().path()), Instant::now());
        let resp = self.route(req, now).await;
        self.metrics.observe_http("admin", route, resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn route<B>(&self, req: Request<B>, now: Instant) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if let Some(channel) = metadata::channel_of(path) {
            let channel = channel.to_owned();
            return self.post_metadata(req, &channel, now).await;
        }
        if let Some(target) = channels::target_of(path) {
            return self.channels_api(req.method(), req.headers(), target);
        }
        if path.starts_with("/api/") {
            return error(StatusCode::NOT_FOUND, "not_found", "no such API endpoint");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp =
                text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n".into());
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        match path {
            // Prometheus text exposition format 0.0.4.
            "/metrics" => {
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render().into())
            }
            "/healthz" => text(StatusCode::OK, "application/json", r#"{"status":"ok"}"#.into()),
            "/readyz" => self.readyz(),
            _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
        }
    }
}

/// The `route` label of an admin request, from a fixed list.
fn route_of(path: &str) -> &'static str {
    if metadata::channel_of(path).is_some() {
        return "metadata";
    }
    match channels::target_of(path) {
        Some(channels::Target::List | channels::Target::One(_)) => return "channels",
        Some(channels::Target::Disconnect(_)) => return "disconnect",
        None => {}
    }
    match path {
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        _ => "other",
    }
}

fn text(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 404 for a channel name that is not configured.
fn unknown_channel(channel: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "unknown_channel", &format!("no channel named {channel:?} is configured"))
}

/// 204: done, nothing to say, nothing to cache.
fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An API error: `{"error":"<code>","message":"<text>"}`.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    text(status, "application/json", body.into())
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn every_admin_path_has_a_route_from_the_fixed_list() {
        for (path, route) in [
            ("/metrics", "metrics"),
            ("/healthz", "healthz"),
            ("/readyz", "readyz"),
            ("/api/v1/channels", "channels"),
            ("/api/v1/channels/demo", "channels"),
            ("/api/v1/channels/demo/disconnect", "disconnect"),
            ("/api/v1/channels/demo/metadata", "metadata"),
            ("/api/v1/channels/a/b/c", "other"),
            ("/api/v2/anything", "other"),
            ("/metrics/", "other"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }
}
