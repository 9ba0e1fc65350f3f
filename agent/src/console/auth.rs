//! Who may use the console. It is never open on the node's network by
//! default:
//! - without a token it listens on a loopback address only (reach it with
//!   `kubectl port-forward`), and answers only requests whose `Host` is a
//!   loopback name or an IP address (a web page the user visits cannot
//!   reach it through a DNS name rebound to 127.0.0.1);
//! - with a token (`--console-token-file`), any address may be used, and
//!   every request needs it: `Authorization: Bearer TOKEN`, or the cookie a
//!   visit to `/?token=TOKEN` sets (then the browser is sent on to the page
//!   without the token in its address). Tokens are compared in constant time.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

/// The cookie a `?token=` login sets.
pub const COOKIE: &str = "agent_console";

/// The console's credential, if it has one.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    token: Option<Arc<str>>,
}

impl Auth {
    /// No credential: only for a loopback address.
    pub fn loopback_only() -> Auth {
        Auth::default()
    }

    /// Every request must carry `token`.
    pub fn with_token(token: &str) -> anyhow::Result<Auth> {
        let token = token.trim();
        anyhow::ensure!(
            token.len() >= 16,
            "the console token is {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
            token.len()
        );
        anyhow::ensure!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "the console token has spaces or control characters; use printable ASCII \
             (e.g. `openssl rand -hex 32`)"
        );
        Ok(Auth {
            token: Some(token.into()),
        })
    }

    /// The credential for a console on `addr`: the token in `token_file`
    /// (surrounding whitespace ignored), or none; a non-loopback address
    /// without one is refused.
    pub fn for_address(addr: SocketAddr, token_file: Option<&Path>) -> anyhow::Result<Auth> {
        match token_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--console-token-file {}", file.display()))?;
                Auth::with_token(&text)
                    .with_context(|| format!("--console-token-file {}", file.display()))
            }
            None if addr.ip().is_loopback() => Ok(Auth::loopback_only()),
            None => anyhow::bail!(
                "--console {addr}: refusing to serve the console on a non-loopback address \
                 without a credential; pass --console-token-file FILE, or listen on \
                 127.0.0.1 (the default) and use `kubectl port-forward`"
            ),
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// The middleware: lets a request through, logs it in (`?token=`), or
/// refuses it (401, or 403 for a non-loopback `Host` without a token).
pub async fn check(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let Some(token) = &auth.token else {
        if !host_is_local(request.headers()) {
            return (
                StatusCode::FORBIDDEN,
                "forbidden: this console answers only on a loopback address (127.0.0.1, localhost)\n",
            )
                .into_response();
        }
        return next.run(request).await;
    };
    if let Some(given) = query_token(request.uri().query()) {
        if !same(&given, token) {
            return unauthorized();
        }
        let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
        let mut response = Redirect::to(request.uri().path()).into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        return response;
    }
    if presented(request.headers()).any(|given| same(given, token)) {
        return next.run(request).await;
    }
    unauthorized()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "unauthorized: send `Authorization: Bearer TOKEN`, or open /?token=TOKEN once in the \
         browser (it sets a cookie)\n",
    )
        .into_response()
}

/// The `token` parameter of a query string.
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The tokens a request presents: bearer and cookie.
fn presented(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "));
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
    bearer.chain(cookies)
}

/// Equal, in time that depends only on the lengths.
fn same(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    diff == 0
}

/// The `Host` header names a loopback host or an IP address (not a DNS name
/// that could have been rebound).
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return true; // HTTP/1.0 without Host: not a browser.
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let err = Auth::for_address("0.0.0.0:9909".parse().unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--console-token-file"), "{err}");
        assert!(!Auth::for_address("127.0.0.1:9909".parse().unwrap(), None)
            .unwrap()
            .has_token());
        assert!(!Auth::for_address("[::1]:9909".parse().unwrap(), None)
            .unwrap()
            .has_token());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let auth = Auth::for_address("0.0.0.0:9909".parse().unwrap(), Some(&file)).unwrap();
        assert_eq!(auth.token.as_deref(), Some("0123456789abcdef0123"));
        std::fs::write(&file, "short").unwrap();
        let err = format!(
            "{:#}",
            Auth::for_address("0.0.0.0:9909".parse().unwrap(), Some(&file)).unwrap_err()
        );
        assert!(err.contains("at least 16"), "{err}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
        assert!(!same("abcd", "abc"));
        assert!(!same("", "abc"));
    }

    #[test]
    fn bearer_and_cookie_are_read_and_hosts_checked() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer t1".parse().unwrap());
        h.insert(header::COOKIE, "a=b; agent_console=t2".parse().unwrap());
        assert_eq!(presented(&h).collect::<Vec<_>>(), ["t1", "t2"]);
        assert_eq!(query_token(Some("x=1&token=a%2Bb")).as_deref(), Some("a+b"));
        for (host, local) in [
            ("localhost:9909", true),
            ("127.0.0.1:9909", true),
            ("[::1]:9909", true),
            ("evil.example:9909", false),
            ("evil.example", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            assert_eq!(host_is_local(&h), local, "{host}");
        }
    }
}
