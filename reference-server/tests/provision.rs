//! Bulk provisioning (`/v1/provision/...`): off without `--provisioning-token`,
//! refused without the token, bounded batches, per-object results, and
//! accounts that log in and chat like ones made one request at a time.

use reference_server::protocol::ServerFrame;
use serde_json::{json, Value};

use crate::support::{Device, TestServer};

const TOKEN: &str = "test-provisioning-token-0123456789";

async fn operator_server() -> TestServer {
    TestServer::with(|c| c.provisioning_token = Some(TOKEN.into())).await
}

/// POSTs to a bulk endpoint with `token` in the provisioning header.
async fn bulk(s: &TestServer, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", s.url))
        .json(&body);
    if let Some(t) = token {
        req = req.header(reference_server::provision::HEADER, t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn account(name: &str, devices: &[&str]) -> Value {
    json!({"username": name, "password": "password123", "devices": devices})
}

#[tokio::test]
async fn bulk_endpoints_do_not_exist_unless_the_operator_enables_them() {
    let s = TestServer::start().await;
    for path in [
        "/v1/provision/accounts",
        "/v1/provision/friends",
        "/v1/provision/groups",
    ] {
        let (status, body) = bulk(&s, path, Some(TOKEN), json!({})).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    }
    // A token too short to be one is refused at start-up, naming the flag.
    let opts = <reference_server::config::Opts as clap::Parser>::parse_from([
        "reference-server",
        "--provisioning-token",
        "short",
    ]);
    let err = opts.into_config().unwrap_err();
    assert_eq!(err.flag, "provisioning-token");
}

#[tokio::test]
async fn a_missing_or_wrong_provisioning_token_is_forbidden_and_creates_nothing() {
    let s = operator_server().await;
    let body = json!({"accounts": [account("mallory", &["d0"])]});
    for token in [None, Some("not-the-provisioning-token"), Some("")] {
        let (status, answer) = bulk(&s, "/v1/provision/accounts", token, body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (403, Some("forbidden")),
            "token {token:?}: {answer}"
        );
        assert!(answer["message"]
            .as_str()
            .unwrap()
            .contains("x-provisioning-token"));
    }
    let (status, _) = bulk(&s, "/v1/provision/friends", None, json!({"pairs": []})).await;
    assert_eq!(status, 403);
    let (status, _) = bulk(&s, "/v1/provision/groups", None, json!({"groups": []})).await;
    assert_eq!(status, 403);
    // Nothing was stored: the name is still free.
    s.signup("mallory").await;
}

#[tokio::test]
async fn a_batch_past_the_limit_is_refused_naming_the_limit() {
    let s = operator_server().await;
    let max = reference_server::provision::MAX_BATCH;
    let accounts: Vec<Value> = (0..=max).map(|i| account(&format!("u{i}"), &[])).collect();
    let (status, body) = bulk(
        &s,
        "/v1/provision/accounts",
        Some(TOKEN),
        json!({ "accounts": accounts }),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("at most {max} accounts")),
        "{message}"
    );
    // None of them was created.
    s.signup("u0").await;

    let pairs: Vec<(u64, u64)> = (0..=max as u64).map(|i| (1, i + 2)).collect();
    let (status, body) = bulk(
        &s,
        "/v1/provision/friends",
        Some(TOKEN),
        json!({ "pairs": pairs }),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));
    let groups: Vec<Value> = (0..=max)
        .map(|_| json!({"name": "g", "members": [1]}))
        .collect();
    let (status, body) = bulk(
        &s,
        "/v1/provision/groups",
        Some(TOKEN),
        json!({ "groups": groups }),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));
    assert!(body["message"].as_str().unwrap().contains("groups"));
}

#[tokio::test]
async fn duplicates_and_taken_names_are_reported_per_account_and_stored_once() {
    let s = operator_server().await;
    s.signup("taken").await;
    let (status, body) = bulk(
        &s,
        "/v1/provision/accounts",
        Some(TOKEN),
        json!({"accounts": [
            account("ann", &["d0", "d1"]),
            account("ben", &[]),
            account("ann", &["d0"]),
            account("taken", &["d0"]),
            account("has space", &[]),
            {"username": "shorty", "password": "short"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 6);
    assert_eq!(body["created"], 2);
    assert!(r[0]["user_id"].as_u64().unwrap() > 0);
    assert_eq!(r[0]["devices"].as_array().unwrap().len(), 2);
    assert_eq!(r[1]["devices"].as_array().unwrap().len(), 0);
    assert_eq!(r[2]["error"], "conflict");
    assert!(r[2]["message"]
        .as_str()
        .unwrap()
        .contains("earlier in this batch"));
    assert_eq!(r[3]["error"], "conflict");
    assert_eq!(r[4]["error"], "bad_request");
    assert_eq!(r[5]["error"], "bad_request");
    assert_eq!(body["servers"].as_array().unwrap().len(), 1);
    // Once each: a second batch with the same names only conflicts, and a
    // login lands on the device the batch made.
    let (_, again) = bulk(
        &s,
        "/v1/provision/accounts",
        Some(TOKEN),
        json!({"accounts": [account("ann", &["d0"]), account("ben", &[])]}),
    )
    .await;
    assert_eq!(again["created"], 0);
    assert_eq!(again["results"][0]["error"], "conflict");
    let login = s.login("ann", Some("d1")).await;
    assert_eq!(login.user_id, r[0]["user_id"].as_u64().unwrap());
    assert_eq!(login.device_id, r[0]["devices"][1]["device_id"]);
    let (status, _) = s
        .post(
            "/v1/signup",
            None,
            json!({"username": "ben", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 409);
}

/// Device `k` of a bulk-created account, as `support` logs one in.
fn device(created: &Value, k: usize, ws_url: &str) -> Device {
    Device {
        token: created["devices"][k]["token"].as_str().unwrap().into(),
        user_id: created["user_id"].as_u64().unwrap(),
        device_id: created["devices"][k]["device_id"].as_u64().unwrap(),
        ws_url: ws_url.into(),
    }
}

#[tokio::test]
async fn bulk_accounts_friends_and_groups_chat_like_ones_made_one_by_one() {
    let s = operator_server().await;
    let (_, body) = bulk(
        &s,
        "/v1/provision/accounts",
        Some(TOKEN),
        json!({"accounts": [
            account("alice", &["d0", "d1"]),
            account("bob", &["d0"]),
            account("carol", &["d0"]),
        ]}),
    )
    .await;
    assert_eq!(body["created"], 3, "{body}");
    let ws_url = body["servers"][0].as_str().unwrap();
    let d = |i: usize, k: usize| device(&body["results"][i], k, ws_url);
    let (alice, alice2, bob, carol) = (d(0, 0), d(0, 1), d(1, 0), d(2, 0));
    assert_ne!(alice.device_id, alice2.device_id);

    let (status, f) = bulk(
        &s,
        "/v1/provision/friends",
        Some(TOKEN),
        json!({"pairs": [[alice.user_id, bob.user_id], [carol.user_id, carol.user_id], [bob.user_id, 999_999]]}),
    )
    .await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(f["created"], 1);
    assert_eq!(f["results"][1]["error"], "bad_request");
    assert_eq!(f["results"][2]["error"], "not_found");
    let (_, friends) = s.get("/v1/friends", Some(&bob.token)).await;
    assert_eq!(friends["friends"][0]["user_id"], alice.user_id);

    let full: Vec<u64> = (0..=reference_server::protocol::MAX_GROUP_MEMBERS as u64)
        .map(|i| alice.user_id + 1000 + i)
        .collect();
    let (status, g) = bulk(
        &s,
        "/v1/provision/groups",
        Some(TOKEN),
        json!({"groups": [
            {"name": "three", "members": [carol.user_id, alice.user_id, bob.user_id, alice.user_id]},
            {"name": "ghost", "members": [alice.user_id, 999_999]},
            {"name": "none", "members": []},
            {"name": "full", "members": full},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["created"], 1);
    assert_eq!(g["results"][1]["error"], "not_found");
    assert_eq!(g["results"][2]["error"], "bad_request");
    assert_eq!(g["results"][3]["error"], "group_full");
    let channel = g["results"][0]["channel"].as_str().unwrap().to_string();

    // A dm from a bulk device reaches the friend's bulk device and the
    // sender's other device; a group message reaches every member.
    let mut wa = alice.connect().await;
    let mut wa2 = alice2.connect().await;
    let mut wb = bob.connect().await;
    let mut wc = carol.connect().await;
    let ack = wa
        .send_to(1, json!({"user": bob.user_id}), "m1", "hi bob")
        .await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    assert_eq!(wb.next_message().await.text, "hi bob");
    assert_eq!(wa2.next_message().await.text, "hi bob");
    let ack = wc
        .send_to(2, json!({"channel": channel}), "m2", "hi group")
        .await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    assert_eq!(wa.next_message().await.text, "hi group");
    assert_eq!(wb.next_message().await.text, "hi group");
    // The password works for a login as for any account.
    let again = s.login("carol", Some("d0")).await;
    assert_eq!(again.device_id, carol.device_id);
}
