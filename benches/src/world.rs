//! The chat side of a measurement: accounts with one device each, paired for
//! direct messages and split into small groups, and the `send` frames their
//! devices write (a share of them to the group, the rest to the partner).
//!
//! Each user sends direct messages to the next user (whose single device is
//! connected: one delivery) and group messages to its own group (one delivery
//! per other member). So a send makes `1 - g + g * (members - 1)` deliveries on
//! average, `g` being the group share; [`World::deliveries_per_send`] says how
//! many for the population built.

use std::fmt::Write as _;

use reference_server::protocol::{CreateGroupResponse, LoginResponse};
use serde_json::json;

use crate::drive::{Frames, Rng};
use crate::post_json;

/// One user's single device.
pub struct Device {
    pub user: u64,
    /// `ws://.../v1/ws?token=...`
    pub url: String,
    /// The user this device's direct messages go to.
    pub partner: u64,
    /// This user's group channel (`g:N`) and its member count.
    pub group: String,
    pub group_size: usize,
}

pub struct World {
    pub devices: Vec<Device>,
}

impl World {
    /// Creates `users` accounts on the server at `base` (`http://HOST:PORT`),
    /// logs each in once, and puts them in groups whose sizes cycle through
    /// `group_sizes`.
    pub async fn create(base: &str, users: usize, group_sizes: &[usize]) -> anyhow::Result<World> {
        anyhow::ensure!(users >= 2, "at least two users");
        anyhow::ensure!(
            group_sizes.iter().all(|&s| s >= 2),
            "groups of two members or more"
        );
        let http = reqwest::Client::new();
        let logins = accounts(&http, base, "w", users).await?;

        // Consecutive users form a group; the last group takes whoever is left.
        let mut groups: Vec<(usize, usize)> = Vec::new(); // (first index, size)
        let mut start = 0;
        for &size in group_sizes.iter().cycle() {
            if start >= users {
                break;
            }
            let size = if users - start < size + 2 {
                users - start
            } else {
                size
            };
            groups.push((start, size));
            start += size;
        }
        let mut group_of = vec![(String::new(), 0usize); users];
        for &(first, size) in &groups {
            let creator = &logins[first];
            let members: Vec<u64> = logins[first + 1..first + size]
                .iter()
                .map(|l| l.user_id)
                .collect();
            let body = json!({"name": format!("g{first}"), "members": members});
            let made: CreateGroupResponse = post_json(
                &http,
                &format!("{base}/v1/groups"),
                Some(&creator.token),
                &body,
            )
            .await?;
            for slot in &mut group_of[first..first + size] {
                *slot = (made.channel.clone(), size);
            }
        }

        let devices = logins
            .iter()
            .zip(group_of)
            .enumerate()
            .map(|(i, (login, (group, group_size)))| Device {
                user: login.user_id,
                url: format!("{}?token={}", login.servers[0], login.token),
                partner: logins[(i + 1) % users].user_id,
                group,
                group_size,
            })
            .collect();
        Ok(World { devices })
    }

    /// Message frames a send makes on average, with group share `g`.
    pub fn deliveries_per_send(&self, g: f64) -> f64 {
        let n = self.devices.len() as f64;
        let group_deliveries: f64 = self
            .devices
            .iter()
            .map(|d| (d.group_size - 1) as f64)
            .sum::<f64>()
            / n;
        (1.0 - g) + g * group_deliveries
    }

    pub fn urls(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.url.clone()).collect()
    }
}

/// Creates `users` accounts named `{prefix}0`, `{prefix}1`, ... and logs each
/// in once (one device each), 64 at a time; in index order.
pub async fn accounts(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
    users: usize,
) -> anyhow::Result<Vec<LoginResponse>> {
    let mut logins = Vec::with_capacity(users);
    let ids: Vec<usize> = (0..users).collect();
    for chunk in ids.chunks(64) {
        let batch = futures_util::future::try_join_all(chunk.iter().map(|&i| async move {
            let name = format!("{prefix}{i}");
            signup(http, base, &name).await?;
            login(http, base, &name).await
        }))
        .await?;
        logins.extend(batch);
    }
    Ok(logins)
}

/// Creates an account (password `password123`).
pub async fn signup(http: &reqwest::Client, base: &str, username: &str) -> anyhow::Result<()> {
    let body = json!({"username": username, "password": "password123"});
    let _: serde_json::Value = post_json(http, &format!("{base}/v1/signup"), None, &body).await?;
    Ok(())
}

/// Logs an account made by [`signup`] in: a new device each time.
pub async fn login(
    http: &reqwest::Client,
    base: &str,
    username: &str,
) -> anyhow::Result<LoginResponse> {
    let body = json!({"username": username, "password": "password123"});
    post_json(http, &format!("{base}/v1/login"), None, &body).await
}

/// The `send` frames of a world's devices: to the group with probability
/// `group_share`, else to the partner; `text` characters of text.
pub struct SendFrames {
    targets: Vec<(u64, String)>,
    group_share: f64,
    text: String,
}

impl SendFrames {
    pub fn new(world: &World, group_share: f64, text_chars: usize) -> SendFrames {
        SendFrames {
            targets: world
                .devices
                .iter()
                .map(|d| (d.partner, d.group.clone()))
                .collect(),
            group_share,
            text: text_of(text_chars),
        }
    }
}

/// The text every measured message carries: `chars` characters, none escaped in JSON.
pub fn text_of(chars: usize) -> String {
    "abcdefghijklmnopqrstuvwxyz0123456789 "
        .chars()
        .cycle()
        .take(chars)
        .collect()
}

impl Frames for SendFrames {
    fn frame(&self, conn: usize, n: u64, rng: &mut Rng) -> String {
        let (partner, group) = &self.targets[conn % self.targets.len()];
        let mut f = String::with_capacity(self.text.len() + 96);
        let _ = write!(f, "{{\"type\":\"send\",\"req\":{n},\"to\":");
        if rng.unit() < self.group_share {
            let _ = write!(f, "{{\"channel\":\"{group}\"}}");
        } else {
            let _ = write!(f, "{{\"user\":{partner}}}");
        }
        let _ = write!(
            f,
            ",\"client_msg_id\":\"c{conn}-{n}\",\"text\":\"{}\"}}",
            self.text
        );
        f
    }
}
