//! The admin listener: `/metrics` for Prometheus, `/healthz` for liveness checks, and the
//! timed-metadata API (`POST /api/v1/channels/{channel}/metadata`, see `docs/api.md`).

mod auth;
mod metadata;
mod rate;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::channel::Channels;
use crate::config::Config;
use crate::http::Body;
use crate::metrics::{Metrics, status_class};

pub struct Admin {
    metrics: Arc<Metrics>,
    channels: Arc<Channels>,
    /// `admin.token`; `None` disables the API.
    token: Option<String>,
    limits: rate::ChannelLimits,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, channels: Arc<Channels>, config: &Config) -> Self {
        let limits = rate::ChannelLimits::new(
            config.channels.iter().map(|c| c.name.as_str()),
            config.admin.metadata_rate,
            config.admin.metadata_burst,
        );
        Self { metrics, channels, token: config.admin.token.clone(), limits }
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
        let resp = self.route(req, now).await;
        self.metrics.http_requests.with_label_values(&["admin", status_class(resp.status().as_u16())]).inc();
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
            _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An API error: `{"error":"<code>","message":"<text>"}`.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    text(status, "application/json", body.into())
}
