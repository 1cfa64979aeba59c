//! The web chat page: `GET /` serves one self-contained page (HTML, CSS and
//! JavaScript inline, no build step, no external requests) that speaks the same
//! HTTP API and WebSocket protocol as every other client (`docs/protocol.md`).
//!
//! It exists so that the design's web clients are real here too, and so that a
//! browser test can exercise sync, reconnect and multi-device the way a user
//! does. The page is also documentation: `web/chat.js` is a readable reference
//! client for the protocol. Both files are compiled into the binary
//! (`include_str!`); the script is placed into the page once, on first use, so
//! that each source file stays valid on its own.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("web/chat.html");
const SCRIPT: &str = include_str!("web/chat.js");
/// Where `chat.html` takes its script.
const SCRIPT_SLOT: &str = "/* chat.js */";

static CHAT_PAGE: LazyLock<String> = LazyLock::new(|| PAGE.replacen(SCRIPT_SLOT, SCRIPT, 1));

/// The browser may run only what the page itself carries: inline script and
/// style, and connections to this origin (HTTP API) and to chat servers
/// (WebSocket, which discovery may place on another node). Anything else is
/// refused by the browser, so the page cannot quietly load from a CDN.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the chat page.
pub async fn chat_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        CHAT_PAGE.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_inlined_once_and_nothing_is_fetched() {
        assert_eq!(PAGE.matches(SCRIPT_SLOT).count(), 1);
        assert!(CHAT_PAGE.contains("class Inbox"));
        for external in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
        ] {
            assert!(
                !CHAT_PAGE.contains(external),
                "the page refers out: {external}"
            );
        }
    }
}
