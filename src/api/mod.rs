//! The admin listener: `/metrics` for Prometheus and `/healthz` for liveness checks.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::http::Body;
use crate::metrics::{Metrics, status_class};

pub struct Admin {
    metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    pub fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        let resp = self.route(req);
        self.metrics.http_requests.with_label_values(&["admin", status_class(resp.status().as_u16())]).inc();
        resp
    }

    fn route<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n".into());
        }
        match req.uri().path() {
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
