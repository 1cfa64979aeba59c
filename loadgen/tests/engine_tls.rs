//! TLS: a small run against a server that speaks only `https://` and `wss://`,
//! with a certificate made for the test (rcgen) and trusted through `--ca-file`;
//! without it the run cannot reach the server (exit 3). With it the population
//! is created over HTTPS and the simulated devices connect over `wss://`: sends
//! from the clock thread, heartbeats, syncs after abrupt disconnects and clean
//! closes all go through each device's TLS session, and the audit finds
//! nothing lost.

use std::time::Duration;

use reference_server::config::Config;
use reference_server::server::Server;
use reference_server::tls::TlsFiles;

use crate::engine_support::{opts, run, scenario, SMALL};

fn num(report: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = report;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_tls_trusts_the_ca_file_and_its_devices_speak_wss() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut config = Config::for_tests();
    config.heartbeat_interval = Duration::from_millis(500);
    config.offline_after = Duration::from_millis(1500);
    config.tls = Some(TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    });
    let server = Server::start(config).await.unwrap();
    let url = server.url();
    assert!(url.starts_with("https://"), "{url}");

    let body = format!("{SMALL}\n[[phase]]\nname = \"steady\"\nduration = \"2s\"\nonline = 8\nmessage_rate = \"30/s\"\ndisconnect_rate = \"6/s\"\n\n[thresholds]\n\"lost\" = \"== 0\"\n\"duplicated\" = \"== 0\"\n");
    let path = scenario(dir.path(), "tls", Some(&url), &body);

    // Without the CA the target's certificate is not trusted: unreachable.
    let (code, r) = run(opts(path.clone(), dir.path().join("untrusted"))).await;
    assert_eq!(code, 3, "{r}");

    let mut with_ca = opts(path, dir.path().join("out"));
    with_ca.ca_file = Some(cert_path);
    let (code, r) = run(with_ca).await;
    assert_eq!(code, 0, "{r}");
    assert!(num(&r, &["metrics", "messages_acked"]) > 20.0, "{r}");
    assert!(num(&r, &["metrics", "deliveries"]) > 20.0, "{r}");
    for k in ["lost", "duplicated"] {
        assert_eq!(num(&r, &["metrics", k]), 0.0, "{k}: {}", r["audit"]);
    }
    assert_eq!(num(&r, &["counters", "connect_errors"]), 0.0, "{r}");
    assert!(num(&r, &["counters", "reconnects"]) > 0.0, "{r}");
    assert!(num(&r, &["counters", "heartbeats"]) > 0.0, "{r}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_is_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let path = scenario(
        dir.path(),
        "no-ca",
        Some("https://127.0.0.1:9"),
        &format!("{SMALL}\n[[phase]]\nduration = \"1s\"\n"),
    );
    let mut o = opts(path, dir.path().join("out"));
    o.ca_file = Some(empty);
    let (code, r) = run(o).await;
    assert_eq!(code, 2, "{r}");
    assert!(r.as_str().unwrap_or_default().contains("--ca-file"), "{r}");
}
