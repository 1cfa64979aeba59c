//! Scenario files: every file in scenarios/ parses, defaults fill what a file
//! leaves out, and every validation rule fails with exit 2 naming its key path.

use std::path::Path;
use std::time::Duration;

use loadgen::error::LoadgenError;
use loadgen::scenario::Scenario;

const MINIMAL: &str = "[[phase]]\nduration = \"1s\"\n";

fn err(text: &str) -> (String, String) {
    match Scenario::parse(text, "t") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e @ LoadgenError::Invalid { .. }) => {
            assert_eq!(e.exit_code(), 2);
            match e {
                LoadgenError::Invalid { path, reason } => (path, reason),
                _ => unreachable!(),
            }
        }
        Err(e) => panic!("not an Invalid error: {e}"),
    }
}

#[test]
fn every_scenario_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!s.phases.is_empty());
            n += 1;
        }
    }
    assert!(n >= 5, "expected the scenario files, found {n}");
}

#[test]
fn defaults_fill_what_a_file_leaves_out() {
    let s = Scenario::parse(MINIMAL, "minimal").unwrap();
    assert_eq!(s.name, "minimal");
    assert_eq!(s.seed, 1);
    assert_eq!(s.target.storage, "memory");
    assert!(s.target.url.is_none());
    assert_eq!(s.population.users, 100);
    assert_eq!(s.population.devices, vec![(1, 1.0)]);
    assert_eq!(s.behavior.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(s.behavior.offline_after, Duration::from_secs(30));
    assert_eq!(s.generator.max_lag, Duration::from_millis(50));
    assert_eq!(
        s.phases[0].online, 100,
        "the first phase defaults to every user online"
    );
    assert_eq!(s.phases[0].message_rate, 0.0);
}

#[test]
fn online_carries_over_from_the_previous_phase() {
    let s = Scenario::parse(
        "[[phase]]\nduration=\"1s\"\nonline=10\n[[phase]]\nduration=\"1s\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(s.phases[1].online, 10);
}

#[test]
fn every_rule_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("bogus = 1\n", "bogus", "unknown field"),
        ("[population]\nuserz = 5\n", "population.userz", "unknown field"),
        ("[[phase]]\nduration = \"1s\"\n[[phase]]\nduration = \"1s\"\nmessage_rate = \"-5/s\"\n", "phase[1].message_rate", "a rate cannot be negative"),
        ("[[phase]]\nduration = \"1s\"\n[[phase]]\nduration = \"1s\"\nfoo = 1\n", "phase[1].foo", "unknown field"),
        ("[[phase]]\nduration = \"soon\"\n", "phase[0].duration", "not a duration"),
        ("[[phase]]\nduration = \"5\"\n", "phase[0].duration", "no unit"),
        ("[[phase]]\nduration = \"0s\"\n", "phase[0].duration", "above 0"),
        ("[population]\nusers = 10\n[[phase]]\nduration = \"1s\"\nonline = 11\n", "phase[0].online", "population.users"),
        ("[population]\nusers = \"many\"\n[[phase]]\nduration = \"1s\"\n", "population.users", "invalid type"),
        ("[population]\nusers = 0\n[[phase]]\nduration = \"1s\"\n", "population.users", "1 to"),
        ("[population]\ndevices = { 1 = 0.5, 2 = 0.3 }\n[[phase]]\nduration = \"1s\"\n", "population.devices", "sum to"),
        ("[population]\ndevices = { 0 = 1.0 }\n[[phase]]\nduration = \"1s\"\n", "population.devices.0", "1 to 10"),
        ("[population]\ndevices = { 1 = 1.5, 2 = -0.5 }\n[[phase]]\nduration = \"1s\"\n", "population.devices.1", "between 0 and 1"),
        ("[population]\ngroups = 2\ngroup_size = { min = 8, max = 4 }\n[[phase]]\nduration = \"1s\"\n", "population.group_size", "above max"),
        ("[population]\ngroup_size = { min = 2, max = 101 }\n[[phase]]\nduration = \"1s\"\n", "population.group_size.max", "at most 100"),
        ("[population]\ngroup_size = { min = 1, max = 4 }\n[[phase]]\nduration = \"1s\"\n", "population.group_size.min", "at least 2"),
        ("[population]\nfriends = -1\n[[phase]]\nduration = \"1s\"\n", "population.friends", "mean"),
        ("[behavior]\ntext_length = { mean = 10, max = 100001 }\n[[phase]]\nduration = \"1s\"\n", "behavior.text_length.max", "100000"),
        ("[behavior]\ntext_length = { mean = 500, max = 100 }\n[[phase]]\nduration = \"1s\"\n", "behavior.text_length.mean", "max"),
        ("[behavior]\ngroup_share = 1.5\n[[phase]]\nduration = \"1s\"\n", "behavior.group_share", "between 0 and 1"),
        ("[behavior]\ngroup_share = 0.5\n[[phase]]\nduration = \"1s\"\n", "behavior.group_share", "no group"),
        ("[behavior]\nreconnect_delay = { min = \"5s\", max = \"1s\" }\n[[phase]]\nduration = \"1s\"\n", "behavior.reconnect_delay", "above max"),
        ("[behavior]\nheartbeat_interval = \"10s\"\noffline_after = \"5s\"\n[[phase]]\nduration = \"1s\"\n", "behavior.offline_after", "shorter"),
        ("[behavior]\nheartbeat_interval = \"fast\"\n[[phase]]\nduration = \"1s\"\n", "behavior.heartbeat_interval", "not a duration"),
        ("[generator]\nmax_lag = \"0ms\"\n[[phase]]\nduration = \"1s\"\n", "generator.max_lag", "above 0"),
        ("[generator]\ninterval = \"10ms\"\n[[phase]]\nduration = \"1s\"\n", "generator.interval", "100ms"),
        ("[generator]\nprovision_concurrency = 0\n[[phase]]\nduration = \"1s\"\n", "generator.provision_concurrency", "1 to 1024"),
        ("[target]\nurl = \"http://:80\"\n[[phase]]\nduration = \"1s\"\n", "target.url", "no host"),
        ("[target]\nurl = \"https://staging:x\"\n[[phase]]\nduration = \"1s\"\n", "target.url", "not a port"),
        ("[target]\nurl = \"ftp://127.0.0.1\"\n[[phase]]\nduration = \"1s\"\n", "target.url", "http://"),
        ("[target]\nservers = 3\n[[phase]]\nduration = \"1s\"\n", "target.servers", "shares"),
        ("[target]\nservers = 3\nstorage = \"embedded:/tmp/x\"\n[[phase]]\nduration = \"1s\"\n", "target.servers", "each node would keep its own"),
        ("[target]\nservers = 0\n[[phase]]\nduration = \"1s\"\n", "target.servers", "1 to 32"),
        ("[target]\nservers = 2\nstorage = \"redis\"\nurl = \"http://127.0.0.1:8080\"\n[[phase]]\nduration = \"1s\"\n", "target.servers", "drop one"),
        ("[target]\nservers = 2\nstorage = \"redis\"\ncluster = \"postgres://x\"\n[[phase]]\nduration = \"1s\"\n", "target.cluster", "Redis"),
        ("[target]\ncluster = \"redis\"\n[[phase]]\nduration = \"1s\"\n", "target.cluster", "servers > 1"),
        ("[target]\nservers = 3\nstorage = \"redis\"\n[[phase]]\nduration = \"1s\"\nkill_node = 4\n", "phase[0].kill_node", "1 to target.servers (3)"),
        ("[target]\nservers = 3\nstorage = \"redis\"\n[[phase]]\nduration = \"1s\"\nstart_node = 2\n", "phase[0].start_node", "is running"),
        ("[target]\nservers = 3\nstorage = \"redis\"\n[[phase]]\nduration = \"1s\"\nkill_node = 2\n[[phase]]\nduration = \"1s\"\nstop_node = 2\n", "phase[1].stop_node", "already down"),
        ("[target]\nurl = \"http://127.0.0.1:8080\"\n[[phase]]\nduration = \"1s\"\nkill_node = 1\n", "phase[0].kill_node", "only the nodes it started"),
        ("name = \"has space\"\n[[phase]]\nduration = \"1s\"\n", "name", "characters"),
        ("", "phase", "at least one"),
        ("[population]\nfriends = 0\n[[phase]]\nduration = \"1s\"\nmessage_rate = \"10/s\"\n", "phase[0].message_rate", "nobody to send to"),
        ("[[phase]]\nduration = \"1s\"\nmessage_rate = \"10/x\"\n", "phase[0].message_rate", "unknown rate unit"),
        ("[[phase]]\nduration = \"1s\"\n[thresholds]\n\"bogus_metric.p99\" = \"< 5ms\"\n", "thresholds", "bogus_metric"),
        ("[[phase]]\nduration = \"1s\"\n[projection]\nbogus = 1\n", "projection.bogus", "unknown field"),
        ("[[phase]\nduration = \"1s\"\n", "scenario file (line 1", ""),
    ];
    for (text, path, reason) in cases {
        let (p, r) = err(text);
        assert!(
            p.starts_with(path),
            "{text:?}: path {p:?}, expected {path:?} (reason {r:?})"
        );
        assert!(
            r.contains(reason) || p.contains(reason),
            "{text:?}: reason {r:?}, expected it to mention {reason:?}"
        );
    }
}

#[test]
fn the_peak_device_count_bounds_descriptors() {
    let s = Scenario::parse("[population]\nusers = 10\ndevices = { 1 = 0.5, 3 = 0.5 }\n[[phase]]\nduration = \"1s\"\nonline = 4\n", "t").unwrap();
    assert_eq!(
        s.peak_devices(),
        12,
        "the 4 users with the most devices, 3 each"
    );
}
