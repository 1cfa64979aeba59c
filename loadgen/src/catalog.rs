//! The catalog of what a run counts and times, each fact declared once.
//!
//! A counter used to be written in five places (the atomic the devices bump,
//! the plain struct an outcome holds, the snapshot between them, the merge, the
//! threshold names, the report rows); a latency metric's index was kept in step
//! by hand with a list of names. Here one line declares each: [`counts!`]
//! generates the plain struct (serialized in report.json), its atomic twin and
//! snapshot, the merge, the names a threshold may use and the report's rows;
//! [`latency_metrics!`] generates [`LATENCY_METRICS`] and one [`Metric`]
//! constant per line, whose index is the line's position. Adding a counter or a
//! metric is adding one line below.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Declares a struct of `u64` counts, one line per count: a doc comment, the
/// field, and the label the report shows. Generates:
/// - the struct (serde, every field defaulting to 0 so older reports read back),
/// - `NAMES` (the threshold names), `get(name)`, `merge(other)` and `rows()`
///   ((name, label, value) in declaration order, for the reports),
/// - with `atomic NAME`: a twin of relaxed `AtomicU64`s and its `snapshot()`.
macro_rules! counts {
    (
        $(#[$meta:meta])*
        pub struct $name:ident / atomic $atomic:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $label:literal, )*
        }
    ) => {
        counts! {
            $(#[$meta])*
            pub struct $name { $( $(#[doc = $doc])* $field: $label, )* }
        }

        #[doc = concat!("The counts of [`", stringify!($name), "`] as relaxed atomics, bumped where events happen.")]
        #[derive(Debug, Default)]
        pub struct $atomic {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
        }

        impl $atomic {
            /// The counts now.
            pub fn snapshot(&self) -> $name {
                $name { $( $field: self.$field.load(Relaxed), )* }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $( $(#[doc = $doc])* #[serde(default)] pub $field: u64, )*
        }

        impl $name {
            /// Every count's name, as thresholds and report.json write it.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// A count by name; `None` for a name this struct does not have.
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $( stringify!($field) => Some(self.$field), )*
                    _ => None,
                }
            }

            /// Adds another's counts into these.
            pub fn merge(&mut self, o: &$name) {
                $( self.$field += o.$field; )*
            }

            /// (name, label, value) of every count, in declaration order.
            pub fn rows(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$( (stringify!($field), $label, self.$field), )*]
            }
        }
    };
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

counts! {
    /// Event counts over the measured phases.
    pub struct Counters / atomic AtomicCounters {
        /// Sends the open-model schedule asked for.
        messages_scheduled: "messages scheduled",
        /// Sends written to a socket.
        messages_sent: "messages sent",
        messages_acked: "messages acked",
        /// Sends answered with an `error` frame.
        send_errors: "send errors",
        /// Message frames received by devices (live and by sync, first copy per device).
        deliveries: "deliveries",
        connects: "connects",
        connect_errors: "connect errors",
        /// Abrupt disconnects the scenario injected (no close frame).
        disconnects: "disconnects (injected)",
        /// Connections closed by the server (1008 slow consumer, 1001 shutdown, ...).
        server_closes: "server closes",
        reconnects: "reconnects",
        syncs: "syncs",
        heartbeats: "heartbeats",
        presence_frames: "presence frames",
        /// History page reads the open-model schedule asked for (`history_rate`).
        history_scheduled: "history reads scheduled",
        /// History pages received in full (a 2xx answer, parsed).
        history_reads: "history pages read",
        /// Messages in those pages (their mean size is this over `history_reads`).
        history_messages: "history messages read",
        /// Reads not issued because too many were in flight (the generator's cap).
        history_skipped: "history reads skipped (in-flight cap)",
        /// Receipts stamped before their scheduled time (clocks of two processes
        /// apart): counted, not recorded as a latency.
        negative_latency: "receipts before their scheduled time",
        /// Send arrivals drawn while nobody was online yet: not scheduled.
        sends_before_online: "send arrivals before anyone was online (not scheduled)",
    }
}

counts! {
    /// The audit's counts: what it checked and what it found.
    pub struct AuditCounts {
        /// Acked messages checked.
        messages_checked: "acked messages checked",
        /// (message, member device) pairs that had to arrive.
        deliveries_expected: "expected deliveries",
        /// Pairs the device received live (a `message` frame; the sender: its ack).
        delivered_live: "delivered live",
        /// Pairs the device received by a sync (after a seq gap or a reconnect).
        recovered: "recovered by a sync",
        /// Pairs in the member's inbox that a connected device never received
        /// (only the audit's read found them): the live path failed.
        undelivered: "undelivered (only the audit's read found them)",
        /// Pairs in the inbox of a device that was offline at the end, above
        /// what it had received: its next sync brings them.
        awaiting_sync: "awaiting the device's next sync (offline at the end)",
        /// Pairs not in the member's inbox at all.
        lost: "lost",
        duplicated: "duplicated",
        reordered: "reordered",
        /// Sends written but not acked by the end of the drain.
        unacked: "sends written, never acked",
        /// Sends queued for a device that never got to write them.
        unsent: "sends queued, never written",
        /// Sends refused because the device's queue was full (the generator's bound).
        refused: "sends refused (generator queue full)",
        /// Inboxes the audit read: users a message could have reached (a
        /// sender, its friends, its group mates).
        inboxes_read: "inboxes read by the audit",
        /// Users no message could have reached: their inboxes were not read.
        inboxes_skipped: "inboxes not read (no message could reach them)",
    }
}

/// Declares the latency metrics, one line each: the constant, the name (the
/// key in report.json, the `.hlog` file, the threshold) and what it measures.
/// A metric's index is its line's position, so nothing is kept in step by hand.
macro_rules! latency_metrics {
    ( $( $konst:ident = $name:literal : $what:literal, )* ) => {
        /// Line positions, so each constant's index is derived.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[repr(usize)]
        enum Position { $( $konst, )* }

        /// Latency metric names (keys of `Outcome::histograms`) and what they measure.
        pub const LATENCY_METRICS: &[(&str, &str)] = &[ $( ($name, $what), )* ];

        impl Metric {
            $( pub const $konst: Metric = Metric(Position::$konst as usize); )*
        }
    };
}

/// A latency metric, by its position in [`LATENCY_METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric(usize);

impl Metric {
    pub fn name(self) -> &'static str {
        LATENCY_METRICS[self.0].0
    }

    /// Its position in [`LATENCY_METRICS`].
    pub fn index(self) -> usize {
        self.0
    }
}

latency_metrics! {
    DELIVERY = "delivery_latency": "scheduled send -> each recipient device receives it",
    DELIVERY_1TO1 = "delivery_latency_1to1": "delivery_latency for one-to-one messages",
    DELIVERY_GROUP = "delivery_latency_group": "delivery_latency for group messages",
    ACK = "ack_latency": "scheduled send -> the sender's ack",
    FANOUT = "fanout_latency": "scheduled send -> the last online member device of a group receives it",
    CONNECT = "connect_latency": "TCP connect -> hello frame",
    SYNC = "sync_latency": "reconnect -> the device's inbox is caught up",
    PRESENCE = "presence_latency": "a status change -> an online friend receives the presence frame",
    DELIVERY_UNCORRECTED = "delivery_latency_uncorrected": "actual send -> each recipient device receives it",
    ACK_UNCORRECTED = "ack_latency_uncorrected": "actual send -> the sender's ack",
    HISTORY = "history_latency": "scheduled history read -> the whole page received (HTTP)",
    RECOVERY = "recovery_latency": "a server-initiated close (1008, 1001, lost connection) -> reconnected and caught up",
    FAILOVER = "failover_latency": "a node fault (kill_node, stop_node) -> the device's next hello on a live node",
    DELIVERY_SAME_NODE = "delivery_latency_same_node": "delivery_latency where the sending and receiving devices are on one node (cluster)",
    DELIVERY_CROSS_NODE = "delivery_latency_cross_node": "delivery_latency where they are on different nodes (cluster)",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_indices_follow_the_declaration() {
        for (i, (name, _)) in LATENCY_METRICS.iter().enumerate() {
            assert_eq!(Metric(i).name(), *name);
        }
        assert_eq!(Metric::DELIVERY.name(), "delivery_latency");
        assert_eq!(Metric::FANOUT.name(), "fanout_latency");
        assert_eq!(Metric::ACK_UNCORRECTED.name(), "ack_latency_uncorrected");
        assert_eq!(Metric::HISTORY.name(), "history_latency");
    }

    #[test]
    fn one_declaration_drives_atomic_snapshot_merge_and_names() {
        let a = AtomicCounters::default();
        inc(&a.messages_sent);
        inc(&a.history_skipped);
        let mut c = a.snapshot();
        assert_eq!((c.messages_sent, c.history_skipped), (1, 1));
        c.merge(&a.snapshot());
        assert_eq!(c.get("messages_sent"), Some(2));
        assert_eq!(c.get("nope"), None);
        assert_eq!(Counters::NAMES.len(), c.rows().len());
        assert!(c
            .rows()
            .iter()
            .any(|&(n, l, v)| n == "disconnects" && l == "disconnects (injected)" && v == 0));
        // Older reports lack newer counts: they read as 0.
        let old: Counters = serde_json::from_str(r#"{"messages_sent": 3}"#).unwrap();
        assert_eq!(old.messages_sent, 3);
        assert_eq!(old.history_reads, 0);
    }

    /// report.json's `metrics` holds the audit's counts as top-level numbers
    /// beside the latency summaries, and reads back with both intact.
    #[test]
    fn audit_counts_sit_beside_the_latency_metrics_in_report_json() {
        let json = r#"{"lost": 2, "reordered": 1,
            "delivery_latency": {"count": 3, "mean_ms": 1.0, "p50_ms": 1.0, "p90_ms": 1.0,
                "p99_ms": 1.0, "p999_ms": 1.0, "max_ms": 1.0},
            "messages_scheduled": 0, "messages_sent": 0, "messages_acked": 0, "deliveries": 0,
            "peak_connections": 0, "server_memory_per_connection": null,
            "server_memory_note": "", "throughput": 0.0, "delivery_rate": 0.0, "errors_total": 0}"#;
        let m: crate::report::Metrics = serde_json::from_str(json).unwrap();
        assert_eq!(
            (m.audit.lost, m.audit.reordered, m.audit.duplicated),
            (2, 1, 0)
        );
        assert_eq!(m.latency["delivery_latency"].count, 3);
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["lost"], 2);
        assert_eq!(back["delivery_latency"]["count"], 3);
    }
}
