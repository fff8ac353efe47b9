//! One error shape for every answer from 400 up, whichever route or layer gives it:
//!
//! ```json
//! {"code":"VALIDATION_ERROR","message":"Invalid request: 1 validation error(s): ...",
//!  "detail":[{"type":"missing","loc":["body","value"],"msg":"Field required"}],
//!  "errors":[...the same list...],"error":"Invalid request: ...","timestamp":"2026-02-21T12:00:00.000000+00:00"}
//! ```
//!
//! `code`, `message`, `errors` and `timestamp` are what the second reference analytics service's
//! clients read; `detail` what FastAPI clients read (the list of field errors on a 422, the message
//! otherwise); `error` what the dashboard (`/api/v1`) clients read. `errors` is present on 422s only.
//! Answers from layers (the body limit's 413, the router's 404 and 405, the timeout's 408) are
//! given this shape by [`json_errors`] on their way out.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

/// One field's problem, as pydantic reports it: a type, where (`["body","value"]`), a message.
#[derive(Clone, Debug)]
pub(crate) struct FieldError {
    kind: &'static str,
    loc: Vec<Value>,
    msg: String,
}

impl FieldError {
    /// A problem of `kind` at `loc` (`["body", "value"]`, `["query", "type"]`).
    pub(crate) fn new(kind: &'static str, loc: &[&str], msg: impl Into<String>) -> Self {
        Self {
            kind,
            loc: loc.iter().map(|s| Value::from(*s)).collect(),
            msg: msg.into(),
        }
    }

    /// A required field that is not there.
    pub(crate) fn missing(loc: &[&str]) -> Self {
        Self::new("missing", loc, "Field required")
    }

    fn to_json(&self) -> Value {
        json!({ "type": self.kind, "loc": self.loc, "msg": self.msg })
    }

    /// `value`, `payload.platform`; `body` for the body as a whole.
    fn path(&self) -> String {
        let skip = usize::from(self.loc.len() > 1);
        self.loc
            .iter()
            .skip(skip)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// An error answer: a status, a code, a message and, for a 422, the field errors.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    errors: Vec<FieldError>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 422 with `errors` (at least one).
    pub(crate) fn validation(errors: Vec<FieldError>) -> Self {
        let listed = errors
            .iter()
            .map(|e| format!("{}: {}", e.path(), e.msg))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "Invalid request: {} validation error(s): {listed}",
                errors.len()
            ),
            errors,
        }
    }

    /// 422 for one field.
    pub(crate) fn field(error: FieldError) -> Self {
        Self::validation(vec![error])
    }
}

/// The machine-readable code of an error status.
pub(crate) fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BAD_REQUEST",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        413 => "PAYLOAD_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        422 => "VALIDATION_ERROR",
        429 => "RATE_LIMITED",
        503 => "SERVICE_UNAVAILABLE",
        s if s >= 500 => "INTERNAL_ERROR",
        _ => "CLIENT_ERROR",
    }
}

/// The body of an error answer with `status` and `message` (and `errors` for a 422).
pub(crate) fn body(status: StatusCode, message: &str, errors: &[FieldError]) -> Value {
    let timestamp = Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
    let mut body = json!({
        "code": code(status),
        "message": message,
        "detail": message,
        "error": message,
        "timestamp": timestamp,
    });
    if !errors.is_empty() {
        let list: Vec<Value> = errors.iter().map(FieldError::to_json).collect();
        body["detail"] = Value::from(list.clone());
        body["errors"] = Value::from(list);
    }
    body
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = body(self.status, &self.message, &self.errors);
        (self.status, axum::Json(body)).into_response()
    }
}

/// Whether `headers` say the body is JSON (`application/json` or `application/<x>+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// 415 unless `req` says its body is JSON: what a cross-site form or `text/plain` post sends
/// cannot write.
pub(crate) fn require_json(req: &Request) -> Result<(), ApiError> {
    if is_json(req.headers()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: send the body as JSON, with `Content-Type: application/json`",
        ))
    }
}

/// The message of an error status answered by a layer or the router, without a body of its own.
fn layer_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "Not Found: no such route (see /docs)",
        405 => "Method Not Allowed: see the `allow` header and /docs",
        408 => "Request Timeout: the request took longer than REQUEST_TIMEOUT_SECONDS",
        413 => "Payload Too Large: the body is over MAX_BODY_BYTES",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

/// Gives an error answer that is not JSON (the router's empty 404 and 405, the body limit's
/// plain-text 413, the timeout's empty 408) the one error shape; leaves every other answer as it is.
pub(crate) fn json_errors<B>(res: http::Response<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_rampart::BoxError>,
{
    let status = res.status();
    if status.as_u16() < 400 || is_json(res.headers()) {
        return res.map(Body::new);
    }
    let (mut parts, _) = res.into_parts();
    let text = body(status, layer_message(status), &[]).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(text))
}
