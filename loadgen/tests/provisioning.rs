//! Creating the population: the bulk path (`/v1/provision/...`) makes the
//! same accounts, devices, friendships and groups as one request per object,
//! in far fewer requests; a run with it audits only the inboxes a message
//! could have reached.

use std::collections::BTreeSet;

use loadgen::population::{self, Population};
use loadgen::scenario::Population as Spec;
use reference_server::config::Config;
use reference_server::protocol::ChannelId;
use reference_server::server::Server;
use reference_server::store::Store;

use crate::engine_support::{opts, run, scenario};

const TOKEN: &str = "loadgen-test-provisioning-token";

async fn server() -> Server {
    let mut config = Config::for_tests();
    config.provisioning_token = Some(TOKEN.into());
    Server::start(config).await.unwrap()
}

fn spec() -> Spec {
    Spec {
        users: 60,
        devices: vec![(1, 0.5), (2, 0.3), (3, 0.2)],
        friends: 4.0,
        groups: 6,
        group_size: (3, 6),
    }
}

/// The population as the server stores it, by user index: each user's
/// friends, each group's members, each device's owner.
async fn stored(store: &dyn Store, pop: &Population) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let index = |id: u64| {
        pop.users
            .iter()
            .position(|u| u.id == id)
            .expect("a user of this population") as u32
    };
    let mut friends = Vec::new();
    for (u, user) in pop.users.iter().enumerate() {
        let found = store.user_by_name(&pop.username(u as u32)).await.unwrap();
        assert_eq!(found.map(|r| r.id), Some(user.id));
        let mut f: Vec<u32> = store
            .friends(user.id)
            .await
            .unwrap()
            .into_iter()
            .map(index)
            .collect();
        f.sort_unstable();
        friends.push(f);
        for &d in &user.devices {
            let dev = &pop.devices[d as usize];
            let owner = store.token_owner(&dev.token).await.unwrap().unwrap();
            assert_eq!((owner.user_id, owner.device_id), (user.id, dev.device_id));
        }
    }
    let mut groups = Vec::new();
    for g in pop.groups.iter() {
        let Some(ChannelId::Group(n)) = ChannelId::parse(&g.channel) else {
            panic!("not a group channel: {}", g.channel)
        };
        let members = store.group_members(n).await.unwrap().unwrap();
        groups.push(members.into_iter().map(index).collect());
    }
    (friends, groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_per_object_provisioning_make_the_same_population() {
    let server = server().await;
    let base = server.url();
    let client = population::http_client(8).unwrap();

    let mut one_by_one = population::plan(&spec(), 3);
    let per_object = population::provision(&client, &base, &mut one_by_one, 8)
        .await
        .unwrap();
    // Another nonce (the time in ms) for the second population's names.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut batched = population::plan(&spec(), 3);
    let bulk = population::bulk::provision(&client, &base, TOKEN, &mut batched, 1)
        .await
        .unwrap();
    assert_ne!(one_by_one.nonce, batched.nonce);

    let store = server.app().store.clone();
    let (friends_a, groups_a) = stored(&*store, &one_by_one).await;
    let (friends_b, groups_b) = stored(&*store, &batched).await;
    assert_eq!(friends_a, friends_b);
    assert_eq!(groups_a, groups_b);
    // And both are the plan: every planned friendship, every group's members
    // with its creator first.
    let planned: BTreeSet<(u32, u32)> = one_by_one.friendships.iter().copied().collect();
    let made: BTreeSet<(u32, u32)> = friends_b
        .iter()
        .enumerate()
        .flat_map(|(a, f)| f.iter().map(move |&b| (a as u32, b)))
        .filter(|(a, b)| a < b)
        .collect();
    assert_eq!(planned, made);
    let members: Vec<Vec<u32>> = batched.groups.iter().map(|g| g.members.clone()).collect();
    assert_eq!(groups_b, members);
    assert_eq!(one_by_one.devices.len(), batched.devices.len());
    assert_eq!(one_by_one.ws_url, batched.ws_url);

    // What each path reports: the same objects, in far fewer requests.
    assert_eq!(per_object.method, "per_object");
    assert_eq!(bulk.method, "bulk");
    assert_eq!(per_object.objects, bulk.objects);
    assert_eq!(
        bulk.objects,
        60 + batched.devices.len() as u64 + batched.friendships.len() as u64 + 6
    );
    assert_eq!(per_object.requests, 1 + per_object.objects);
    // The health check, then one batch each of accounts, friendships, groups.
    assert_eq!(bulk.requests, 4);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_the_run_before_it_starts() {
    let server = server().await;
    let client = population::http_client(8).unwrap();
    let mut pop = population::plan(&spec(), 3);
    let err = population::bulk::provision(&client, &server.url(), "not-the-token", &mut pop, 1)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("provisioning token"), "{err}");
    server.stop().await.unwrap();
}

/// 300 users, 6 of them online: the audit reads the senders', their friends'
/// and group mates' inboxes, not all 300, and still checks every pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_provisions_in_bulk_and_audits_only_the_inboxes_it_needs() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let body = "[population]\nusers = 300\ndevices = { 1 = 0.6, 2 = 0.4 }\nfriends = 2\ngroups = 4\ngroup_size = { min = 3, max = 4 }\n\n[behavior]\nheartbeat_interval = \"500ms\"\noffline_after = \"1500ms\"\n\n[[phase]]\nname = \"chat\"\nduration = \"1500ms\"\nonline = 6\nmessage_rate = \"20/s\"\n\n[thresholds]\n\"lost\" = \"== 0\"\n";
    let path = scenario(dir.path(), "bulk", Some(&server.url()), body);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[target]\n",
        &format!("[target]\nprovisioning_token = \"{TOKEN}\"\n"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 0, "{r}");
    let p = &r["provisioning"];
    assert_eq!(p["method"], "bulk", "{p}");
    assert_eq!(p["users"], 300);
    assert_eq!(p["requests"], 4, "{p}");
    assert!(p["objects_per_second"].as_f64().unwrap() > 0.0);
    let m = |k: &str| r["metrics"][k].as_u64().unwrap_or_else(|| panic!("{k}"));
    assert!(m("messages_checked") > 0);
    assert_eq!(m("lost"), 0);
    let (read, skipped) = (m("inboxes_read"), m("inboxes_skipped"));
    assert_eq!(read + skipped, 300);
    assert!(read > 0 && read < 150, "read {read} of 300 inboxes");
    assert_eq!(
        m("delivered_live") + m("recovered") + m("undelivered") + m("awaiting_sync") + m("lost"),
        m("deliveries_expected")
    );
    assert_eq!(r["audit"]["inboxes_read"], read);
    server.stop().await.unwrap();
}
