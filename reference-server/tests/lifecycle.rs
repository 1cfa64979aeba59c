//! The binary: the `listening on` line, port 0, SIGTERM closing sessions with
//! 1001 and exiting 0, and command-line errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::{Device, TestServer};

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--storage",
            "memory",
            "--password-hash-memory-kib",
            "8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );

    let http = reqwest::Client::new();
    let signup = serde_json::json!({"username": "sig", "password": "password123"});
    assert_eq!(
        http.post(format!("{url}/v1/signup"))
            .json(&signup)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let login: reference_server::protocol::LoginResponse = http
        .post(format!("{url}/v1/login"))
        .json(&signup)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = Device {
        token: login.token,
        user_id: login.user_id,
        device_id: login.device_id,
        ws_url: login.servers[0].clone(),
    };
    let mut ws = device.connect().await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(ws.close_code().await, Some(1001));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_flags_are_refused_with_a_message_naming_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args(["--listen", "127.0.0.1:0", "--offline-after-ms", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--offline-after-ms"));
    let out = Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_storage_exits_2_and_unreachable_storage_exits_3_with_a_plain_message() {
    let run = |storage: &str| {
        Command::new(env!("CARGO_BIN_EXE_reference-server"))
            .args(["--listen", "127.0.0.1:0", "--storage", storage])
            .output()
            .unwrap()
    };
    let out = run("bogus://x");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--storage"));
    for url in [
        "redis://127.0.0.1:1",
        "postgres://postgres@127.0.0.1:1/none",
    ] {
        let out = run(url);
        assert_eq!(out.status.code(), Some(3), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("connection refused to {url}")) && !stderr.contains("Os {"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn stopping_the_library_server_closes_sessions_with_1001() {
    let s = TestServer::start().await;
    let a = s.user("stop").await;
    let mut ws = a.connect().await;
    let stopping = tokio::spawn(s.stop());
    assert_eq!(ws.close_code().await, Some(1001));
    stopping.await.unwrap();
}
