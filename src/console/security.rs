//! The console's guard: authentication off loopback, CSRF on every POST, read-only mode and
//! the security headers of every response.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngCore;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::pages::error_page;
use super::Shared;

/// The Content-Security-Policy of every page: only this origin, no inline script or style.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The largest form body accepted (ids of a page of dead letters fit easily).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// A fresh random CSRF token (hex).
pub(crate) fn new_csrf_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True when `a` equals `b`, in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Whether the request carries the console's token (bearer, or basic auth as the password).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(rest.as_bytes(), token.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        let password = match decoded.iter().position(|b| *b == b':') {
            Some(colon) => &decoded[colon + 1..],
            None => return false,
        };
        return same(password, token.as_bytes());
    }
    false
}

/// Whether a POST's `Origin` (when the browser sends one) is this console.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host == Some(host)
}

/// Runs before every handler: authentication, then for a POST the write switch, the origin
/// and the CSRF token; adds the security headers to whatever is answered.
pub(crate) async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let mut response = check(&state, request, next).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn check(state: &Shared, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.token {
        if !authorized(request.headers(), token.expose_secret()) {
            let mut response = error_page(
                StatusCode::UNAUTHORIZED,
                "Authentication required",
                "This console needs its token: send it as a bearer token, or as the password \
                 of basic authentication (any user name).",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pdq console\", charset=\"UTF-8\""),
            );
            return response;
        }
    }
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    if request.method() != Method::POST {
        return error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "The console answers GET, and POST for its forms.",
        );
    }
    if !state.config.allow_writes {
        return error_page(
            StatusCode::FORBIDDEN,
            "Read-only console",
            "This console was started read-only: restart it with --allow-writes to requeue, \
             purge or cancel.",
        );
    }
    if !same_origin(request.headers()) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Cross-origin request refused",
            "The form was not sent from this console.",
        );
    }
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "Select fewer rows at once.",
            )
        }
    };
    let csrf = url::form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.into_owned());
    match csrf {
        Some(csrf) if same(csrf.as_bytes(), state.csrf.as_bytes()) => {}
        _ => {
            return error_page(
                StatusCode::FORBIDDEN,
                "Missing or wrong CSRF token",
                "The form did not carry this console's CSRF token (was the console restarted? \
                 Reload the page and try again). Nothing was changed.",
            )
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_token_is_accepted_as_bearer_or_basic_password_only() {
        let token = "0123456789abcdef";
        assert!(authorized(&with_auth("Bearer 0123456789abcdef"), token));
        let basic = base64::engine::general_purpose::STANDARD.encode("ops:0123456789abcdef");
        assert!(authorized(&with_auth(&format!("Basic {basic}")), token));
        assert!(!authorized(&with_auth("Bearer 0123456789abcdeX"), token));
        assert!(!authorized(&with_auth("Bearer 0123456789abcde"), token));
        let user_only = base64::engine::general_purpose::STANDARD.encode("0123456789abcdef");
        assert!(!authorized(
            &with_auth(&format!("Basic {user_only}")),
            token
        ));
        assert!(!authorized(&HeaderMap::new(), token));
    }

    #[test]
    fn a_post_from_another_origin_is_told_apart() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9188"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9188"),
        );
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!same_origin(&headers));
    }
}
