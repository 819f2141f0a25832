//! HTTP Basic authentication for the endpoints that change things (POST, PUT, PATCH, DELETE), as
//! Patroni's `restapi.authentication`. Credentials are compared in constant time and never logged;
//! reads (GET, HEAD, OPTIONS) stay open for load balancers and monitoring. With
//! `api.verify_client = optional` those endpoints also need a client certificate (Patroni's rule).

use super::{ApiPeer, ApiState};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::fmt;
use subtle::ConstantTimeEq;

/// The username and password the API demands on mutating requests.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl BasicAuth {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> BasicAuth {
        BasicAuth { username: username.into(), password: password.into() }
    }

    /// True if `header` (an `Authorization` value) carries exactly these credentials.
    pub fn accepts(&self, header: &[u8]) -> bool {
        let Some((scheme, encoded)) = std::str::from_utf8(header).ok().and_then(|h| h.trim().split_once(' ')) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both halves are always compared, so the timing does not tell which one was wrong.
        let user_ok = user.ct_eq(self.username.as_bytes());
        let pass_ok = pass.ct_eq(self.password.as_bytes());
        bool::from(user_ok & pass_ok)
    }
}

/// Refuses mutating requests without the right credentials (401 with `WWW-Authenticate`), or
/// without a client certificate where `verify_client = optional` asks for one (403).
pub(crate) async fn require_auth(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    if state.changes_need_client_certificate {
        let shown = req.extensions().get::<ConnectInfo<ApiPeer>>().is_some_and(|peer| peer.0.client_certificate);
        if !shown {
            let message = "forbidden: this endpoint needs a client certificate signed by the agents' api.cafile \
                           (api.verify_client = optional); pgha ctl takes it with --cert and --key";
            tracing::warn!(method = %req.method(), path = req.uri().path(), "REST API request refused: {message}");
            return (StatusCode::FORBIDDEN, message).into_response();
        }
    }
    let Some(auth) = state.auth.as_ref() else {
        return next.run(req).await;
    };
    let message = match req.headers().get(header::AUTHORIZATION) {
        Some(value) if auth.accepts(value.as_bytes()) => return next.run(req).await,
        Some(_) => "not authenticated: wrong username or password",
        None => "not authenticated: this endpoint needs HTTP Basic credentials (restapi username and password)",
    };
    tracing::warn!(method = %req.method(), path = req.uri().path(), "REST API request refused: {message}");
    let mut response = (StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"pgha\""));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_pass: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass)).into_bytes()
    }

    #[test]
    fn accepts_only_the_exact_credentials() {
        let auth = BasicAuth::new("admin", "s3cr:et");
        assert!(auth.accepts(&header("admin:s3cr:et")));
        assert!(auth.accepts(b"basic YWRtaW46czNjcjpldA=="));
        assert!(!auth.accepts(&header("admin:s3cr")));
        assert!(!auth.accepts(&header("Admin:s3cr:et")));
        assert!(!auth.accepts(&header("admins3cr:et")));
        assert!(!auth.accepts(b"Bearer YWRtaW46czNjcjpldA=="));
        assert!(!auth.accepts(b"Basic !!!"));
        assert!(!auth.accepts(b""));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", BasicAuth::new("admin", "hunter2"));
        assert!(shown.contains("admin") && !shown.contains("hunter2"), "{shown}");
    }
}
