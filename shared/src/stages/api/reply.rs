//! How an answer leaves the API: a refusal (`ApiError`, the body `contract::Problem`), a
//! success (`Reply`), and the HTTP response either becomes, with the headers every answer
//! carries.

use super::*;

/// A refusal or failure, as the client sees it: `{"error", "message", "field"?}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: u16,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) field: Option<String>,
    /// Seconds after which a refused (429) call may be tried again (`Retry-After`).
    pub(super) retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub(super) fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.to_owned()),
            ..Self::new(400, "bad_request", message)
        }
    }

    pub(super) fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", what)
    }

    pub(super) fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // The detail goes to the log, not to the caller.
        error!(error = %format!("{e:#}"), "API request failed");

        Self::new(
            503,
            "unavailable",
            "the request could not be completed now; try again (the API's log has the cause)",
        )
    }
}

/// A successful answer.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: ReplyBody,
    pub(super) location: Option<String>,
    /// For the audit trail.
    pub(super) summary: String,
}

pub(super) enum ReplyBody {
    Json(Value),
    Html(String),
    Empty,
}

impl Reply {
    pub(super) fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: ReplyBody::Json(body),
            location: None,
            summary: String::new(),
        }
    }

    /// An answer of the contract's types (`crate::contract`).
    pub(super) fn typed<T: serde::Serialize>(status: u16, body: &T) -> Result<Self, ApiError> {
        Ok(Self::json(
            status,
            serde_json::to_value(body).map_err(anyhow::Error::from)?,
        ))
    }

    pub(super) fn said(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }
}

pub(super) fn redirect(url: String) -> Reply {
    Reply {
        status: 302,
        body: ReplyBody::Empty,
        location: Some(url),
        summary: String::new(),
    }
}

/// The page a refused download link shows.
pub(super) fn link_page(why: &str) -> String {
    let why = minijinja::HtmlEscape(why);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid — Charlie</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem\">\
         <h1>This download link cannot be used</h1><p>{why}.</p>\
         <p>Ask the report's owner to send it again, or download the report from Charlie's dashboard.</p></body></html>"
    )
}

/// The HTTP response of an answer.
pub(super) fn respond(result: Result<Reply, ApiError>) -> axum::response::Response {
    let (status, headers, body) = answer(result);
    let mut r = axum::response::Response::new(axum::body::Body::from(body));
    *r.status_mut() = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    *r.headers_mut() = headers;
    r
}

/// An answer's status, headers and body, with the headers every answer carries.
pub(super) fn answer(result: Result<Reply, ApiError>) -> (u16, HeaderMap, String) {
    let mut retry_after = None;
    let (status, body, content_type, location) = match result {
        Ok(r) => match r.body {
            ReplyBody::Json(v) => (
                r.status,
                v.to_string(),
                Some("application/json"),
                r.location,
            ),
            ReplyBody::Html(h) => (r.status, h, Some("text/html; charset=utf-8"), r.location),
            ReplyBody::Empty => (r.status, String::new(), None, r.location),
        },
        Err(e) => {
            retry_after = e.retry_after;
            let body = contract::Problem {
                error: e.code.to_owned(),
                message: e.message,
                field: e.field,
                retry_after: e.retry_after,
            };
            let text = serde_json::to_string(&body).unwrap_or_default();
            (e.status, text, Some("application/json"), None)
        }
    };
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if let Some(ct) = content_type {
        set("content-type", ct);
    }
    if let Some(l) = &location {
        set("location", l);
    }
    set("x-content-type-options", "nosniff");
    set("cache-control", "no-store");
    set("x-frame-options", "DENY");
    set("referrer-policy", "no-referrer");
    set(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    );
    set(
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    );
    if let Some(s) = retry_after {
        set("retry-after", &s.to_string());
    }
    if status == 401 {
        set("www-authenticate", "Bearer realm=\"charlie\"");
    }
    (status, headers, body)
}
