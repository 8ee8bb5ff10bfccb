//! The console's guard: the host names it answers (DNS rebinding), authentication off
//! loopback, CSRF on every POST, read-only mode and the security headers of every response.

use std::net::{IpAddr, SocketAddr};

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

/// The host names and addresses a console answers. A page on another site whose name was
/// rebound to the console's address sends its own name as `Host`, so anything but these is
/// refused before a handler runs.
#[derive(Debug, Clone)]
pub(crate) struct Hosts {
    /// The address the console listens on (`None`: loopback only).
    listen: Option<IpAddr>,
    /// Further names (lowercase, without port or trailing dot): `--public-url`'s host and
    /// `--allowed-host`.
    names: Vec<String>,
}

impl Hosts {
    /// The hosts of a console listening on `listen` that also answers `extra` (host names,
    /// `host:port` or URLs; ports are ignored).
    pub(crate) fn new(listen: Option<SocketAddr>, extra: &[String]) -> Hosts {
        Hosts {
            listen: listen.map(|addr| addr.ip()),
            names: extra.iter().filter_map(|h| normalize_host(h)).collect(),
        }
    }

    /// Whether a request whose `Host` is `host` (with or without port) is for this console.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let Some(host) = normalize_host(host) else {
            return false;
        };
        if self.names.contains(&host) {
            return true;
        }
        let listen = self.listen.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let local = listen.is_loopback() || listen.is_unspecified();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            // An address literal cannot be rebound: a page can only reach it under its own
            // origin. Every interface: any of the machine's addresses.
            Ok(ip) => ip == listen || listen.is_unspecified() || (ip.is_loopback() && local),
            Err(_) => local && host == "localhost",
        }
    }
}

/// A `Host` value (or a URL, or `host:port`) as a lowercase name without port or trailing dot;
/// IPv6 literals keep their brackets. `None` when there is no host in it.
pub(crate) fn normalize_host(value: &str) -> Option<String> {
    let value = value.trim();
    let value = match value.split_once("://") {
        Some((_, rest)) => rest,
        None => value,
    };
    let authority = value.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        &authority[..=end]
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':'));
    valid.then_some(host)
}

/// The host a request names: its `Host` header, else the authority of its URI (HTTP/2).
fn requested_host(request: &Request) -> Option<String> {
    match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok().map(str::to_owned),
        None => request.uri().authority().map(|a| a.as_str().to_owned()),
    }
}

/// Whether a POST's `Origin` (when the browser sends one) is this console: the origin of its
/// `Host`, or one of the names it was started for (a proxy may rewrite `Host`).
fn same_origin(headers: &HeaderMap, hosts: &Hosts) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if normalize_host(origin).is_some_and(|name| hosts.names.contains(&name)) {
        return true;
    }
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
    if !requested_host(&request).is_some_and(|host| state.hosts.allows(&host)) {
        return error_page(
            StatusCode::MISDIRECTED_REQUEST,
            "Unknown host name",
            "This console answers only the host names it was started for: its listen address, \
             localhost, and those of --public-url and --allowed-host. Open it under one of \
             those, or restart it with --allowed-host NAME for the name you use (a reverse \
             proxy's, say).",
        );
    }
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
    if !same_origin(request.headers(), &state.hosts) {
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
    fn host_values_are_normalized_and_matched_without_their_port() {
        assert_eq!(
            normalize_host("https://User@PDQ.example.com.:8443/console?x").as_deref(),
            Some("pdq.example.com")
        );
        assert_eq!(normalize_host("[::1]:9188").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host("host:port"), None);
        let loopback = Hosts::new(Some("127.0.0.1:9188".parse().unwrap()), &[]);
        assert!(loopback.allows("localhost:9188"));
        assert!(loopback.allows("[::1]"));
        assert!(!loopback.allows("10.0.0.1:9188"));
        assert!(!loopback.allows("localhost.evil.test"));
        assert!(!loopback.allows(""));
        let public = Hosts::new(
            Some("10.0.0.5:9188".parse().unwrap()),
            &["https://pdq.example.com/".to_owned()],
        );
        assert!(public.allows("10.0.0.5:9188"));
        assert!(public.allows("pdq.example.com"));
        assert!(
            !public.allows("localhost:9188"),
            "not listening on loopback"
        );
        assert!(!public.allows("127.0.0.1:9188"));
    }

    #[test]
    fn a_post_from_another_origin_is_told_apart() {
        let hosts = Hosts::new(None, &["pdq.example.com".to_owned()]);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9188"));
        assert!(same_origin(&headers, &hosts));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9188"),
        );
        assert!(same_origin(&headers, &hosts));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://pdq.example.com"),
        );
        assert!(same_origin(&headers, &hosts), "the proxy's name");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!same_origin(&headers, &hosts));
    }
}
