//! The WebSocket opening handshake (RFC 6455 section 4), client side, written
//! by hand like the rest of the device's wire: one request written, the
//! response read up to its blank line, `101` and `Sec-WebSocket-Accept`
//! checked. What the server sent after the response (often `hello` already)
//! is handed back, for the frame reader ([`crate::engine::inbound`]) to start
//! from. Nothing of the handshake stays allocated once it is done.

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest response head accepted.
const MAX_HEAD: usize = 8 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `ws://HOST:PORT/PATH` split into the `Host` header and the request path.
pub fn split_url(url: &str) -> (&str, &str) {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_of(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Opens the WebSocket on `tcp` (a socket, or a TLS session over one): `GET {path}?token={token}` to `host`, with
/// `nonce` as the key. Returns the bytes read past the response head.
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    (host, path): (&str, &str),
    token: &str,
    nonce: [u8; 16],
) -> Result<Vec<u8>, String> {
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let request = format!(
        "GET {path}?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tcp.flush().await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(512);
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() >= MAX_HEAD {
            return Err(format!("handshake response head over {MAX_HEAD} bytes"));
        }
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    check(&head[..end], &accept_of(&key))?;
    Ok(head.split_off(end))
}

/// Checks a response head: status 101 and the expected accept value.
fn check(head: &[u8], accept: &str) -> Result<(), String> {
    let text = std::str::from_utf8(head).map_err(|_| "handshake response is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.1 ") || code != "101" {
        return Err(format!("HTTP error: {}", status.trim()));
    }
    let header = |name: &str| {
        lines.clone().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err("handshake response without Upgrade: websocket".into());
    }
    match header("sec-websocket-accept") {
        Some(v) if v == accept => Ok(()),
        _ => Err("handshake response with a wrong Sec-WebSocket-Accept".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_the_rfcs() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_of("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            split_url("ws://127.0.0.1:80/v1/ws"),
            ("127.0.0.1:80", "/v1/ws")
        );
        assert_eq!(split_url("ws://h:1"), ("h:1", "/"));
    }

    #[test]
    fn responses_other_than_a_proper_101_are_refused() {
        let accept = accept_of("k");
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n");
        assert_eq!(check(ok.as_bytes(), &accept), Ok(()));
        let e = check(b"HTTP/1.1 401 Unauthorized\r\n\r\n", &accept).unwrap_err();
        assert!(e.contains("401"), "{e}");
        let wrong = ok.replace(&accept, "AAAA");
        assert!(check(wrong.as_bytes(), &accept).is_err());
        let no_upgrade = ok.replace("upgrade: websocket\r\n", "");
        assert!(check(no_upgrade.as_bytes(), &accept).is_err());
    }

    /// Against the reference server: the handshake opens, and the bytes
    /// after the head are the start of the `hello` frame.
    #[tokio::test]
    async fn the_server_accepts_the_handshake() {
        use reference_server::config::Config;
        use reference_server::server::Server;
        let server = Server::start(Config::for_tests()).await.unwrap();
        let http = reqwest::Client::new();
        let base = server.url();
        let body = serde_json::json!({"username": "hs", "password": "password123"});
        http.post(format!("{base}/v1/signup"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let login: reference_server::protocol::LoginResponse = http
            .post(format!("{base}/v1/login"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (host, path) = split_url(&login.servers[0]);
        let addr: std::net::SocketAddr = host.parse().unwrap();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let rest = open(&mut tcp, (host, path), &login.token, [7; 16])
            .await
            .unwrap();
        // The bytes after the head start the frame stream: `hello` first.
        let mut reader = crate::engine::inbound::FrameReader::with(rest);
        let mut first = None;
        let mut on = |f: crate::engine::inbound::Frame<'_>| {
            if let crate::engine::inbound::Frame::Text(t) = f {
                first = Some(String::from_utf8_lossy(t).into_owned());
            }
            false
        };
        if reader.feed(&[], &mut on).unwrap() {
            loop {
                tcp.readable().await.unwrap();
                let p = crate::engine::inbound::pump(&tcp, &mut reader, &mut on).unwrap();
                if p == crate::engine::inbound::Pumped::Stopped {
                    break;
                }
            }
        }
        let first = first.unwrap();
        assert!(first.contains("\"type\":\"hello\""), "{first}");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let e = open(&mut tcp, (host, path), "bad-token", [7; 16])
            .await
            .unwrap_err();
        assert!(e.contains("HTTP error"), "{e}");
        server.stop().await.unwrap();
    }
}
