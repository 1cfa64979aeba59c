//! The web chat page: `GET /` serves one self-contained page (HTML, CSS and
//! JavaScript inline, no build step, no external requests) that speaks the same
//! HTTP API and WebSocket protocol as every other client (`docs/protocol.md`).
//!
//! It exists so that the design's web clients are real here too, and so that a
//! browser test can exercise sync, reconnect and multi-device the way a user
//! does. The page is also documentation, a readable reference client for the
//! protocol: `web/client.js` (connection, heartbeats, backoff, inbox cursor),
//! `web/chat.js` (one device's chat state: sync, dedupe, sends, history) and
//! `web/ui.js` (the page). The files are compiled into the binary
//! (`include_str!`); the scripts are placed into the page once, on first use,
//! so that each source file stays valid on its own.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("web/chat.html");
/// Each script and its slot in `chat.html` (`<script>/* NAME */</script>`), in page order.
const SCRIPTS: [(&str, &str); 3] = [
    ("/* client.js */", include_str!("web/client.js")),
    ("/* chat.js */", include_str!("web/chat.js")),
    ("/* ui.js */", include_str!("web/ui.js")),
];

static CHAT_PAGE: LazyLock<String> = LazyLock::new(|| {
    SCRIPTS
        .iter()
        .fold(PAGE.to_string(), |page, (slot, script)| {
            page.replacen(slot, script, 1)
        })
});

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
    fn the_scripts_are_inlined_once_and_nothing_is_fetched() {
        for (slot, script) in SCRIPTS {
            assert_eq!(PAGE.matches(slot).count(), 1, "{slot}");
            assert!(CHAT_PAGE.contains(script), "{slot} inlined");
            assert!(!CHAT_PAGE.contains(slot), "{slot} replaced");
        }
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
