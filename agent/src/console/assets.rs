//! The page, its script and its style, inside the binary. Plain HTML, JS and
//! CSS (no build step); the script fills the page from the JSON API and
//! writes data as text only (never as HTML).
use axum::http::header;
use axum::response::IntoResponse;

pub const INDEX_HTML: &str = include_str!("assets/index.html");
pub const CONSOLE_JS: &str = include_str!("assets/console.js");
pub const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Only this origin's script and style; no framing.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}
