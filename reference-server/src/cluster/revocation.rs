//! Logout and token revocation across the cluster.
//!
//! A token is checked against storage when a connection opens, so a revoked token
//! cannot open a new one anywhere. What remains is the device's connections that
//! are already open, possibly on other nodes: the node that handled the logout
//! closes its own at once and publishes a close envelope to every other node where
//! the user has a connection (one lookup, one publish: well within a second). The
//! receiving node closes that device's connections (1000 "logged out") and drops
//! the device from its local presence, as the logout would have here.

use std::sync::Arc;

use super::link::ClusterError;
use super::routing::{Envelope, Router};
use crate::auth::now_ms;
use crate::hub::Hub;
use crate::outbox::CloseReason;
use crate::presence::Presence;
use crate::protocol::{DeviceId, UserId};

pub struct Revocation {
    router: Arc<Router>,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
}

impl Revocation {
    pub fn new(router: Arc<Router>, hub: Arc<Hub>, presence: Arc<Presence>) -> Self {
        Revocation {
            router,
            hub,
            presence,
        }
    }

    /// Tells the other nodes holding `user`'s connections to close `device`'s.
    pub async fn revoke(&self, user: UserId, device: DeviceId) -> Result<(), ClusterError> {
        let (by_node, _) = self.router.others(&[user]).await?;
        let out = by_node
            .into_keys()
            .map(|instance| (instance, Envelope::Close { user, device }))
            .collect();
        self.router.publish(out).await
    }

    /// Another node logged `device` out: close it here too.
    pub fn apply(&self, user: UserId, device: DeviceId) {
        self.hub.close_device(user, device, CloseReason::LoggedOut);
        self.presence.logout(user, device, now_ms());
    }
}
