//! Observability of a call besides its span's opening: the span's outcome
//! fields (OpenTelemetry HTTP client conventions), W3C `traceparent`
//! propagation ([`TraceContext`]), and opt-in logging of bodies with
//! sensitive JSON and form fields redacted.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::Value;

/// Records a response's status on the call's span. Per the OpenTelemetry
/// HTTP semantic conventions for a CLIENT span, a 4xx as well as a 5xx is
/// an error: `otel.status_code = "ERROR"` and `error.type` set to the
/// status code ("For HTTP status codes in the 4xx range span status MUST
/// be set to Error in case of SpanKind.CLIENT"; a SERVER span leaves 4xx
/// unset). The response is still returned as `Ok`.
pub(crate) fn record_status(span: &tracing::Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_client_error() || status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
}

/// The id of a tower-http `RequestId` in the caller's extensions (put there
/// with [`RequestBuilder::extension`](crate::RequestBuilder::extension)), to
/// carry a server's incoming request id on to the calls it makes.
pub(crate) fn caller_request_id(extensions: &http::Extensions) -> Option<HeaderValue> {
    #[cfg(any(
        feature = "redirect",
        feature = "gzip",
        feature = "deflate",
        feature = "brotli",
        feature = "zstd"
    ))]
    if let Some(id) = extensions.get::<tower_http::request_id::RequestId>() {
        return Some(id.header_value().clone()).filter(|v| !v.is_empty());
    }
    let _ = extensions;
    None
}

/// After a response: its body logged when asked, and its metrics.
#[allow(unused_variables, reason = "the metrics feature reads more")]
pub(crate) fn finished(
    span: &tracing::Span,
    response: &crate::ApiResponse,
    log_bodies: Option<std::num::NonZeroUsize>,
) {
    if let Some(max) = log_bodies {
        let _entered = span.enter();
        log_body(
            "response body",
            response.bytes(),
            response.headers().get(http::header::CONTENT_TYPE),
            max,
        );
    }
    #[cfg(feature = "metrics")]
    crate::metrics::response(
        response.method(),
        response.url(),
        response.status(),
        response.elapsed(),
        response.summary(),
    );
}

/// Logs a request's body (`ClientBuilder::log_bodies`) in its span.
pub(crate) fn log_request_body(
    span: &tracing::Span,
    body: &Bytes,
    content_type: Option<&HeaderValue>,
    max: std::num::NonZeroUsize,
) {
    let _entered = span.enter();
    log_body("request body", body, content_type, max);
}

/// Logs a body at `DEBUG` in the current span (`ClientBuilder::log_bodies`).
pub(crate) fn log_body(
    what: &'static str,
    body: &Bytes,
    content_type: Option<&HeaderValue>,
    max: std::num::NonZeroUsize,
) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let shown = shown_body(body, content_type, max.get());
        tracing::debug!(body = %shown, "{what}");
    }
}

/// Records a failed call on its span: `error.type` is the error's kind,
/// and the span's status is an error.
pub(crate) fn record_error(span: &tracing::Span, kind: crate::ErrorKind) {
    span.record("error.type", tracing::field::debug(kind));
    span.record("otel.status_code", "ERROR");
}

/// The port of a request's URL, the scheme's default when it names none.
pub(crate) fn server_port(uri: &Uri) -> u16 {
    uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    })
}

/// A W3C Trace Context (`traceparent`, version `00`): the trace a call
/// belongs to and the span it is a child of.
///
/// Put one in a request's extensions
/// ([`RequestBuilder::extension`](crate::RequestBuilder::extension)) to make
/// the call part of that trace; with
/// [`ClientBuilder::propagate_traceparent`](crate::ClientBuilder::propagate_traceparent)
/// on, the call sends `traceparent: 00-<trace id>-<new span id>-<flags>`
/// (a new span id for each call: the outgoing request is a child of the
/// given span), or starts a new sampled trace when there is none. No
/// OpenTelemetry dependency: read the ids from your tracer and build this.
///
/// ```
/// let parent = tollgate::TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .expect("valid");
/// assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(parent.sampled());
/// assert_eq!(tollgate::TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

impl TraceContext {
    /// A context from its parts; `None` when either id is zero (invalid in
    /// W3C Trace Context).
    pub fn new(trace_id: u128, parent_id: u64, sampled: bool) -> Option<TraceContext> {
        (trace_id != 0 && parent_id != 0).then_some(TraceContext {
            trace_id,
            parent_id,
            flags: u8::from(sampled),
        })
    }

    /// Parses a `traceparent` header value (version `00`, or a later
    /// version read as `00` as the spec asks); `None` for anything invalid.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version.eq_ignore_ascii_case("ff")
            || (version == "00" && parts.next().is_some())
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let context = TraceContext::new(
            u128::from_str_radix(trace, 16).ok()?,
            u64::from_str_radix(parent, 16).ok()?,
            false,
        )?;
        Some(TraceContext { flags, ..context })
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent span's id as 16 lowercase hex digits.
    pub fn parent_id(&self) -> String {
        format!("{:016x}", self.parent_id)
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }

    /// The context of a child span of this one: the same trace and flags,
    /// a new random span id.
    pub(crate) fn child(&self) -> TraceContext {
        TraceContext {
            parent_id: nonzero_u64(),
            ..*self
        }
    }

    /// A new sampled trace.
    pub(crate) fn fresh() -> TraceContext {
        let mut trace_id = fastrand::u128(..);
        if trace_id == 0 {
            trace_id = 1;
        }
        TraceContext {
            trace_id,
            parent_id: nonzero_u64(),
            flags: 1,
        }
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// Sets `traceparent` on a request unless the caller set one: a child of
/// the [`TraceContext`] in `extensions`, or a new trace. Returns the trace
/// id sent.
pub(crate) fn propagate(headers: &mut HeaderMap, extensions: &http::Extensions) -> Option<String> {
    const TRACEPARENT: &str = "traceparent";
    if let Some(own) = headers.get(TRACEPARENT) {
        return own
            .to_str()
            .ok()
            .and_then(TraceContext::parse)
            .map(|c| c.trace_id());
    }
    let context = extensions
        .get::<TraceContext>()
        .map_or_else(TraceContext::fresh, TraceContext::child);
    let value = HeaderValue::from_str(&context.header()).ok()?;
    headers.insert(TRACEPARENT, value);
    Some(context.trace_id())
}

/// JSON object keys and form field names whose values body logging never
/// shows: compared as substrings, without regard to case and with `_` and
/// `-` ignored on both sides, so `user_password`, `refresh_token`,
/// `privateKey` and `private-key` are all covered. The OAuth2 credentials
/// sent in token requests (`client_assertion`, `code_verifier`,
/// `assertion`, RFC 7523 and 7636) are listed too.
pub const SENSITIVE_BODY_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "session",
    "signature",
    "assertion",
    "code_verifier",
];

fn is_sensitive_field(name: &str) -> bool {
    let folded = fold_field_name(name);
    SENSITIVE_BODY_FIELDS
        .iter()
        .any(|s| folded.contains(&fold_field_name(s)))
}

/// Lower case, without `_` and `-`: `privateKey`, `private-key` and
/// `PRIVATE_KEY` are one name.
fn fold_field_name(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A body as body logging shows it: JSON with sensitive fields' values
/// replaced by `"REDACTED"`, a urlencoded form likewise, other text as it
/// is, anything else as its length only; at most `max` bytes, then
/// `…(N bytes)`.
pub(crate) fn shown_body(body: &Bytes, content_type: Option<&HeaderValue>, max: usize) -> String {
    if body.is_empty() {
        return String::new();
    }
    let ct = content_type
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = if ct.contains("json") || (ct.is_empty() && body.first() == Some(&b'{')) {
        match serde_json::from_slice::<Value>(body) {
            Ok(mut value) => {
                redact_json(&mut value);
                value.to_string()
            }
            Err(_) => format!("({} bytes, not valid JSON: not shown)", body.len()),
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let shown: Vec<(String, &str)> = pairs
            .iter()
            .map(|(k, v)| {
                let v = if is_sensitive_field(k) {
                    "REDACTED"
                } else {
                    v.as_str()
                };
                (k.clone(), v)
            })
            .collect();
        serde_urlencoded::to_string(shown).unwrap_or_default()
    } else if ct.starts_with("text/") || ct.contains("xml") {
        String::from_utf8_lossy(body).into_owned()
    } else {
        return format!(
            "({} bytes of {}: not shown)",
            body.len(),
            if ct.is_empty() { "unknown type" } else { &ct }
        );
    };
    truncate(text, max, body.len())
}

fn truncate(mut text: String, max: usize, total: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("…({total} bytes)"));
    text
}

fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_sensitive_field(key) {
                    *v = Value::from("REDACTED");
                } else {
                    redact_json(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_sensitive_json_fields_are_redacted_and_the_rest_kept() {
        let body = Bytes::from_static(
            br#"{"user":"ann","password":"p4ss","nested":[{"refresh_token":"t0k","n":1}]}"#,
        );
        let ct = HeaderValue::from_static("application/json");
        let shown = shown_body(&body, Some(&ct), 1000);
        assert!(!shown.contains("p4ss") && !shown.contains("t0k"), "{shown}");
        assert!(
            shown.contains("\"user\":\"ann\"") && shown.contains("\"n\":1"),
            "{shown}"
        );
    }

    #[test]
    fn forms_are_redacted_binary_is_not_shown_and_long_text_is_cut() {
        let form = HeaderValue::from_static("application/x-www-form-urlencoded");
        let shown = shown_body(
            &Bytes::from_static(b"user=ann&client_secret=s3c"),
            Some(&form),
            100,
        );
        assert_eq!(shown, "user=ann&client_secret=REDACTED");
        let bin = HeaderValue::from_static("application/octet-stream");
        let shown = shown_body(&Bytes::from_static(b"\x00\x01secret"), Some(&bin), 100);
        assert!(
            !shown.contains("secret") && shown.contains("8 bytes"),
            "{shown}"
        );
        let text = HeaderValue::from_static("text/plain");
        let shown = shown_body(&Bytes::from(vec![b'a'; 50]), Some(&text), 10);
        assert_eq!(shown, format!("{}…(50 bytes)", "a".repeat(10)));
    }

    #[test]
    fn traceparent_round_trips_and_rejects_invalid_values() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(v).expect("valid");
        assert_eq!(c.header(), v);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let child = c.child();
        assert_eq!(child.trace_id(), c.trace_id());
        assert_ne!(child.parent_id(), c.parent_id());
    }
}
