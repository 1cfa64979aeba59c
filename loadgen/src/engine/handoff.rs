//! What one part of a split run leaves for the merge, beside its ledger of
//! acked messages ([`crate::engine::ledger`]).
//!
//! A process driving a share of the users (a worker, a shard) knows only its
//! own half of two facts that span processes:
//!
//! - **Pairs it cannot classify alone.** Its audit reads its own users'
//!   inboxes. A message there that its own ledger lacks was acked by another
//!   process (or never acked): it cannot tell which. It classifies its
//!   devices' copies anyway and writes one [`Pending`] record per such
//!   (user, message): the merge counts those whose message some ledger holds.
//! - **A group message's fan-out.** Its devices saw the arrivals of their own
//!   members only. It writes the last arrival it saw per group message
//!   ([`Arrival`]); the merge takes the latest across processes, one
//!   `fanout_latency` sample per message, as one process would have.
//!
//! Fixed-size little-endian records, streamed, like the ledger.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

/// Pending pairs of a part's run directory.
pub const PENDING: &str = "pending.bin";
/// Fan-out arrivals of a part's run directory.
pub const FANOUT: &str = "fanout.bin";

/// One (user, message) of a user's inbox whose message this process did not
/// send: how the user's devices got it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Global user index.
    pub user: u32,
    pub channel: u64,
    pub id: u64,
    /// Devices of the user that got it live, by sync, never although
    /// connected, or will by their next sync.
    pub live: u16,
    pub recovered: u16,
    pub undelivered: u16,
    pub awaiting: u16,
}

const PENDING_LEN: usize = 28;

/// The `channel` of a pending record that says only that its user's inbox
/// could not be read: the merge then checks no other part's messages against
/// that inbox (they are unchecked, not lost; the audit is incomplete).
pub const UNREAD: u64 = u64::MAX;

impl Pending {
    /// The record for an inbox that could not be read.
    pub fn unread(user: u32) -> Pending {
        Pending {
            user,
            channel: UNREAD,
            id: 0,
            live: 0,
            recovered: 0,
            undelivered: 0,
            awaiting: 0,
        }
    }
}

impl Pending {
    fn encode(&self) -> [u8; PENDING_LEN] {
        let mut b = [0u8; PENDING_LEN];
        b[..4].copy_from_slice(&self.user.to_le_bytes());
        b[4..12].copy_from_slice(&self.channel.to_le_bytes());
        b[12..20].copy_from_slice(&self.id.to_le_bytes());
        for (i, v) in [self.live, self.recovered, self.undelivered, self.awaiting]
            .iter()
            .enumerate()
        {
            b[20 + 2 * i..22 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Pending {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Pending {
            user: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            channel: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
            id: u64::from_le_bytes(b[12..20].try_into().expect("8 bytes")),
            live: u16_at(20),
            recovered: u16_at(22),
            undelivered: u16_at(24),
            awaiting: u16_at(26),
        }
    }
}

/// The latest live arrival of one group message among this process's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub channel: u64,
    pub id: u64,
    /// Scheduled send time and latest arrival, Unix µs.
    pub sched_us: u64,
    pub last_us: u64,
}

const ARRIVAL_LEN: usize = 32;

impl Arrival {
    fn encode(&self) -> [u8; ARRIVAL_LEN] {
        let mut b = [0u8; ARRIVAL_LEN];
        for (i, v) in [self.channel, self.id, self.sched_us, self.last_us]
            .iter()
            .enumerate()
        {
            b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Arrival {
        let at = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        Arrival {
            channel: at(0),
            id: at(1),
            sched_us: at(2),
            last_us: at(3),
        }
    }
}

/// A buffered file of fixed-size records.
pub struct Records {
    out: BufWriter<File>,
}

impl Records {
    pub fn create(path: &Path) -> std::io::Result<Records> {
        Ok(Records {
            out: BufWriter::with_capacity(64 * 1024, File::create(path)?),
        })
    }

    pub fn pending(&mut self, p: &Pending) -> std::io::Result<()> {
        self.out.write_all(&p.encode())
    }

    pub fn arrival(&mut self, a: &Arrival) -> std::io::Result<()> {
        self.out.write_all(&a.encode())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn read_records<T>(path: &Path, len: usize, decode: fn(&[u8]) -> T) -> Result<Vec<T>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() % len != 0 {
        return Err(format!("{} is truncated", path.display()));
    }
    Ok(bytes.chunks_exact(len).map(decode).collect())
}

pub fn read_pending(path: &Path) -> Result<Vec<Pending>, String> {
    read_records(path, PENDING_LEN, Pending::decode)
}

pub fn read_arrivals(path: &Path) -> Result<Vec<Arrival>, String> {
    read_records(path, ARRIVAL_LEN, Arrival::decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pending {
            user: 7,
            channel: u64::MAX - 1,
            id: 1 << 40,
            live: 2,
            recovered: 1,
            undelivered: 0,
            awaiting: 3,
        };
        let a = Arrival {
            channel: 5,
            id: 9,
            sched_us: 1_700_000_000_000_000,
            last_us: 1_700_000_000_001_000,
        };
        let mut w = Records::create(&dir.path().join(PENDING)).unwrap();
        w.pending(&p).unwrap();
        w.pending(&Pending::default()).unwrap();
        w.pending(&Pending::unread(42)).unwrap();
        w.finish().unwrap();
        let mut w = Records::create(&dir.path().join(FANOUT)).unwrap();
        w.arrival(&a).unwrap();
        w.finish().unwrap();
        assert_eq!(
            read_pending(&dir.path().join(PENDING)).unwrap(),
            vec![p, Pending::default(), Pending::unread(42)]
        );
        assert_eq!(Pending::unread(42).channel, UNREAD);
        assert_eq!(read_arrivals(&dir.path().join(FANOUT)).unwrap(), vec![a]);
    }
}
