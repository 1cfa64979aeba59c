//! TLS: with `--tls-cert` and `--tls-key` the binary serves `https://`, says so
//! in its listening line, hands out `wss://` in login and discovery, and chat
//! works over it end to end. The certificate is made for the test (rcgen).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use reference_server::protocol::{LoginResponse, ServerFrame};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
struct TestCert {
    dir: tempfile::TempDir,
    pem: String,
}

impl TestCert {
    fn new() -> Self {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = rcgen::generate_simple_self_signed(names).expect("certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let pem = cert.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
        TestCert { dir, pem }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap()
    }

    fn ws_connector(&self) -> Connector {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Connector::Rustls(Arc::new(config))
    }
}

use rustls_pki_types::pem::PemObject;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn chat_over_tls_with_https_and_wss() {
    let cert = TestCert::new();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_reference-server"))
            .args(["--listen", "127.0.0.1:0", "--storage", "memory"])
            .args(["--password-hash-memory-kib", "8"])
            .args(["--tls-cert", &cert.path("cert.pem")])
            .args(["--tls-key", &cert.path("key.pem")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let http = cert.http();
    let mut devices = Vec::new();
    for name in ["tls-a", "tls-b"] {
        let body = json!({"username": name, "password": "password123"});
        let r = http
            .post(format!("{url}/v1/signup"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let login: LoginResponse = http
            .post(format!("{url}/v1/login"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            login.servers[0].starts_with("wss://127.0.0.1:"),
            "{:?}",
            login.servers
        );
        devices.push(login);
    }
    let (status, discovery) = {
        let r = http
            .get(format!("{url}/v1/discovery"))
            .bearer_auth(&devices[0].token)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    assert!(discovery["servers"][0]
        .as_str()
        .unwrap()
        .starts_with("wss://"));

    // A plain-text client gets nowhere.
    let plain = url.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());

    let mut conns = Vec::new();
    for d in &devices {
        let ws_url = format!("{}?token={}", d.servers[0], d.token);
        let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            ws_url,
            None,
            true,
            Some(cert.ws_connector()),
        )
        .await
        .expect("wss connect");
        let hello = ws.next().await.unwrap().unwrap();
        assert!(hello.to_text().unwrap().contains("\"hello\""));
        conns.push(ws);
    }
    let send = json!({"type": "send", "req": 1, "to": {"user": devices[1].user_id},
        "client_msg_id": "over-tls", "text": "sealed ✉"});
    conns[0]
        .send(Message::Text(send.to_string().into()))
        .await
        .unwrap();
    let ack: ServerFrame =
        serde_json::from_str(conns[0].next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert!(
        matches!(
            ack,
            ServerFrame::Ack {
                req: Some(1),
                id: 1,
                ..
            }
        ),
        "{ack:?}"
    );
    let got: ServerFrame =
        serde_json::from_str(conns[1].next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    match got {
        ServerFrame::Message(m) => assert_eq!(m.text, "sealed ✉"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_or_unreadable_key_is_refused_naming_the_flag() {
    let cert = TestCert::new();
    let out = Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args(["--listen", "127.0.0.1:0", "--storage", "memory"])
        .args(["--tls-cert", &cert.path("cert.pem")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls-key"));
    let out = Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args(["--listen", "127.0.0.1:0", "--storage", "memory"])
        .args(["--tls-cert", &cert.path("cert.pem")])
        .args(["--tls-key", &cert.path("cert.pem")])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"));
}
