//! The fuzzers, briefly: every corpus seed (the inputs that once found a bug
//! included) and a few thousand generated inputs per parser, with no finding;
//! then a sample of generated bad frames and bodies through a real server: each
//! bad frame is answered by an `error` frame and the connection stays open, each
//! bad body by a 4xx JSON error. The long run is the `fuzz` binary.

use std::time::Duration;

use chatscale_benches::fuzz::{mutate, parse_rejects, run, Target};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use reference_server::config::Config;
use reference_server::protocol::{LoginResponse, ServerFrame};
use reference_server::server::Server;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn generated_inputs_find_nothing() {
    for target in Target::ALL {
        let summary = run(target, 4_000, 42);
        assert!(
            summary.findings.is_empty(),
            "{}: {:#?}",
            target.name(),
            summary.findings
        );
        assert!(summary.accepted > 0, "{}: some inputs parse", target.name());
        assert!(
            summary.accepted < summary.inputs,
            "{}: most are rejected",
            target.name()
        );
    }
}

#[test]
fn the_inputs_that_found_bugs_are_kept_and_pass() {
    let found: Vec<String> = std::fs::read_dir(Target::Scenarios.corpus_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("found-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        !found.is_empty(),
        "the scenario corpus keeps its bug finders"
    );
    for input in found {
        // Durations too large for a Duration once panicked the parser, and a
        // vanishing rate the run; now both are errors naming the field.
        assert_eq!(Target::Scenarios.check(&input), Err(String::new()));
    }
}

async fn device(url: &str) -> (String, String) {
    let http = reqwest::Client::new();
    let body = json!({"username": "fuzzed", "password": "password123"});
    http.post(format!("{url}/v1/signup"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let login: LoginResponse = http
        .post(format!("{url}/v1/login"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        format!("{}?token={}", login.servers[0], login.token),
        login.token,
    )
}

#[tokio::test]
async fn a_real_session_answers_every_bad_frame_and_stays_open() {
    let server = Server::start(Config::for_tests()).await.unwrap();
    let (ws_url, _) = device(&server.url()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // hello
    let seeds = Target::Frames.corpus();
    let mut rng = StdRng::seed_from_u64(7);
    let mut sent = 0;
    while sent < 300 {
        let input = mutate(&seeds, Target::Frames, &mut rng);
        let Some(want_req) = parse_rejects(&input) else {
            continue; // a frame that parses would act (send, sync...): not this test's
        };
        sent += 1;
        ws.send(Message::Text(input.clone().into())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer")
            .expect("open")
            .expect("no ws error");
        match serde_json::from_str::<ServerFrame>(answer.to_text().unwrap()) {
            Ok(ServerFrame::Error { code, req, .. }) => {
                assert_eq!((code.as_str(), req), ("bad_request", want_req), "{input:?}")
            }
            other => panic!("{input:?} was answered {other:?}"),
        }
    }
    ws.send(Message::Text(r#"{"type":"heartbeat","req":-5}"#.into()))
        .await
        .unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    assert_eq!(ack.to_text().unwrap(), r#"{"type":"ack","req":-5}"#);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_real_server_answers_every_bad_body_with_a_json_4xx() {
    let server = Server::start(Config::for_tests()).await.unwrap();
    let url = server.url();
    let (_, token) = device(&url).await;
    let http = reqwest::Client::new();
    let seeds = Target::Bodies.corpus();
    let mut rng = StdRng::seed_from_u64(9);
    let paths = ["/v1/signup", "/v1/login", "/v1/groups", "/v1/friends"];
    for i in 0..200 {
        let body = mutate(&seeds, Target::Bodies, &mut rng);
        let path = paths[i % paths.len()];
        let resp = http
            .post(format!("{url}{path}"))
            .bearer_auth(&token)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(status < 500, "{path} {body:?} -> {status} {text}");
        if status >= 400 {
            let e: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path} {body:?} -> non-JSON {text}"));
            assert!(e["error"].is_string() && e["message"].is_string(), "{text}");
        }
    }
    server.stop().await.unwrap();
}
