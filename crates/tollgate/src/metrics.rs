//! Metrics through the `metrics` crate facade (feature `metrics`): what a
//! call's record ([`Summary`]) knows at its end, under OpenTelemetry-style
//! names, for any exporter the application installs (Prometheus,
//! OpenTelemetry, ...). Without a recorder installed, each is a no-op.
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `http.client.request.duration` | histogram, seconds | `http.request.method`, `server.address`, `http.response.status_code` (responses), `error.type` (errors, and 4xx/5xx as the status code) |
//! | `tollgate.client.calls` | counter | `http.request.method` (any method not in RFC 9110 as `_OTHER`, everywhere), `server.address`, `outcome` (`response` or `error`), `error.type` |
//! | `tollgate.client.attempts` | counter, attempts made (0 for a cache hit) | `http.request.method`, `server.address` |
//! | `tollgate.client.cache` | counter | `result`: `hit`, `miss`, `coalesced`, `revalidated`, `stale`, `bypass` |
//! | `tollgate.client.permit_wait` | histogram, seconds (calls that waited) | `server.address` |
//! | `tollgate.client.queue_wait` | histogram, seconds (calls that waited) | `server.address` |
//! | `tollgate.client.redirects` | counter, hops followed | `server.address` |
//!
//! A call that fails has no record: only the duration and the call with its
//! `error.type` (the [`ErrorKind`](crate::ErrorKind), as `Debug` shows it).
//!
//! The rate limiter counts what it learns from the upstream itself (this
//! feature turns on `tollgate-limit`'s `metrics`), at the moment it learns
//! it, so a pause taught by an attempt that was then retried is counted too:
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `tollgate.client.rate_limit.pauses` | counter, pauses learned from a 429/503 `Retry-After` or `RateLimit` fields | `http.response.status_code`, `capped` (`true` when the server asked for more than the limiter's cap) |
//! | `tollgate.client.rate_limit.pause_duration` | histogram, seconds: the pause applied | the same |

use std::time::Duration;

use ::metrics::{counter, histogram};
use http::{Method, StatusCode, Uri};

use crate::response::Summary;

/// Records a call that got a response.
/// The method as a label: the known methods by name, any other as `_OTHER`
/// (the OpenTelemetry rule, which keeps a label's cardinality bounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

pub(crate) fn response(
    method: &Method,
    uri: &Uri,
    status: StatusCode,
    elapsed: Duration,
    summary: &Summary,
) {
    let method = method_label(method);
    let server = uri.host().unwrap_or_default().to_owned();
    let code = status.as_u16().to_string();
    if status.is_client_error() || status.is_server_error() {
        histogram!("http.client.request.duration",
            "http.request.method" => method, "server.address" => server.clone(),
            "http.response.status_code" => code.clone(), "error.type" => code)
        .record(elapsed.as_secs_f64());
    } else {
        histogram!("http.client.request.duration",
            "http.request.method" => method, "server.address" => server.clone(),
            "http.response.status_code" => code)
        .record(elapsed.as_secs_f64());
    }
    counter!("tollgate.client.calls",
        "http.request.method" => method, "server.address" => server.clone(),
        "outcome" => "response")
    .increment(1);
    counter!("tollgate.client.attempts",
        "http.request.method" => method, "server.address" => server.clone())
    .increment(u64::from(summary.attempts));
    #[cfg(feature = "cache")]
    if let Some(status) = summary.cache {
        counter!("tollgate.client.cache", "result" => status.as_str()).increment(1);
    }
    if !summary.permit_wait.is_zero() {
        histogram!("tollgate.client.permit_wait", "server.address" => server.clone())
            .record(summary.permit_wait.as_secs_f64());
    }
    if !summary.queue_wait.is_zero() {
        histogram!("tollgate.client.queue_wait", "server.address" => server.clone())
            .record(summary.queue_wait.as_secs_f64());
    }
    if summary.redirects > 0 {
        counter!("tollgate.client.redirects", "server.address" => server)
            .increment(u64::from(summary.redirects));
    }
}

/// Records a call that ended with an error.
pub(crate) fn error(method: &Method, uri: &Uri, kind: crate::ErrorKind, elapsed: Duration) {
    let method = method_label(method);
    let server = uri.host().unwrap_or_default().to_owned();
    let kind = format!("{kind:?}");
    histogram!("http.client.request.duration",
        "http.request.method" => method, "server.address" => server.clone(),
        "error.type" => kind.clone())
    .record(elapsed.as_secs_f64());
    counter!("tollgate.client.calls",
        "http.request.method" => method, "server.address" => server,
        "outcome" => "error", "error.type" => kind)
    .increment(1);
}
