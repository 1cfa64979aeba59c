//! A device's connection over TLS (`wss://`): the TLS session sits in the
//! device's slot, beside its socket, so every writer (the clock thread's
//! sends, the heartbeat tick, the device's task) encrypts under the slot lock
//! that already orders their frames, and the task decrypts what it reads.
//!
//! The plain-TCP path stays as it is (the frames written straight to the
//! socket, read by one `recv`); only a `wss://` run goes through here:
//!
//! - [`connect`]: the TLS handshake (tokio-rustls, trusting the public roots
//!   and `--ca-file`: [`crate::tls`]), the WebSocket handshake over it, then
//!   the session taken apart into its socket and its [`ClientConnection`].
//! - [`write`]: frames in, ciphertext out as far as the socket takes it now;
//!   what it does not take waits in the session's own buffer, and the task
//!   pushes it when the socket is writable ([`push`]), like the plain backlog.
//! - [`read`]: one `recv` of ciphertext, decrypted under the slot lock, the
//!   plaintext handed to the frame reader ([`crate::engine::inbound`]).

use std::cell::RefCell;
use std::io::{self, Read as _, Write as _};
use std::sync::Arc;

use rustls::ClientConnection;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::engine::inbound::{self, Frame, FrameReader, Pumped};
use crate::engine::sim::{lock, Slot};

/// What a `wss://` run's devices connect with: the trusted roots, made once.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
}

impl TlsTarget {
    /// For a `wss://` URL; `None` for `ws://`.
    pub fn for_url(url: &str) -> Option<TlsTarget> {
        url.starts_with("wss://").then(|| TlsTarget {
            config: crate::tls::client_config(),
        })
    }
}

/// The name a server's certificate must carry: the URL's host (`HOST:PORT`
/// without the port; an IP address or a DNS name).
fn server_name(host_port: &str) -> Result<ServerName<'static>, String> {
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host}: {e}"))
}

/// The TLS handshake on `tcp`, then the WebSocket's over it. Returns the
/// socket, the session, and the plaintext read past the response head.
pub async fn connect(
    target: &TlsTarget,
    tcp: TcpStream,
    url: (&str, &str),
    token: &str,
    nonce: [u8; 16],
) -> Result<(TcpStream, Box<ClientConnection>, Vec<u8>), String> {
    let connector = tokio_rustls::TlsConnector::from(target.config.clone());
    let mut stream = connector
        .connect(server_name(url.0)?, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let mut rest = crate::engine::handshake::open(&mut stream, url, token, nonce).await?;
    let (tcp, mut conn) = stream.into_inner();
    // Plaintext the session decrypted but the handshake did not read yet
    // (often `hello`): the socket will not signal it again.
    drain_plain(&mut conn, &mut rest).map_err(|e| e.to_string())?;
    conn.set_buffer_limit(None);
    Ok((tcp, Box::new(conn), rest))
}

/// Socket writes that do not wait: `WouldBlock` when it takes no more.
struct NowWriter<'a>(&'a TcpStream);

impl io::Write for NowWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pushes the session's ciphertext to the socket as far as it takes it now.
/// `Ok(true)`: all of it went; `Ok(false)`: some waits for writability.
pub fn push(conn: &mut ClientConnection, tcp: &TcpStream) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut NowWriter(tcp)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Encrypts `frame` and pushes what the socket takes (see [`push`]).
pub fn write(conn: &mut ClientConnection, tcp: &TcpStream, frame: &[u8]) -> io::Result<bool> {
    write_only(conn, frame)?;
    push(conn, tcp)
}

/// Encrypts `frame` into the session's buffer, without writing.
pub fn write_only(conn: &mut ClientConnection, frame: &[u8]) -> io::Result<()> {
    conn.writer().write_all(frame)
}

/// Everything the session still has to send, as bytes (after a close frame
/// written into it): for the last writes of a clean close.
pub fn take_ciphertext(conn: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

/// Moves the plaintext the session holds into `into`.
fn drain_plain(conn: &mut ClientConnection, into: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

thread_local! {
    /// Decrypted bytes of one read, per runtime thread.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One `recv` of ciphertext from `tcp`, decrypted with the session in
/// `slot`, and the frames it completes handed to `on` (the TLS counterpart
/// of [`inbound::pump`]).
pub fn read(
    slot: &Slot,
    tcp: &TcpStream,
    reader: &mut FrameReader,
    on: &mut dyn FnMut(Frame<'_>) -> bool,
) -> io::Result<Pumped> {
    PLAIN.with(|plain| {
        let mut plain = plain.borrow_mut();
        plain.clear();
        let pumped = inbound::recv_once(tcp, &mut |mut cipher: &[u8]| {
            let mut ctl = lock(&slot.ctl);
            let Some(conn) = ctl.tls.as_mut() else {
                return Err(io::ErrorKind::NotConnected.into());
            };
            while !cipher.is_empty() {
                conn.read_tls(&mut cipher)?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                drain_plain(conn, &mut plain)?;
            }
            // The session may have something to say back (alerts, updates).
            push(conn, tcp)?;
            Ok(())
        })?;
        let go = reader
            .feed(&plain, on)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if plain.capacity() > 256 * 1024 {
            *plain = Vec::new();
        }
        Ok(if go { pumped } else { Pumped::Stopped })
    })
}
