//! The ledger of acknowledged messages, streamed to a file in the run
//! directory rather than kept in memory.
//!
//! Every ack appends one fixed-size record (24 bytes: channel key, message id,
//! sending user, recipient); the audit reads the file back at the end. A run
//! of any length then holds a buffer, not a record per message, which is what
//! keeps the generator's memory flat after the ramp. Users and groups are
//! named by their global index, so with several processes (workers, shards)
//! the merge reads every process's ledger and completes the audit across them
//! ([`crate::parts`]).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::engine::command::To;

/// File name of a process's ledger inside its run directory.
pub const FILE: &str = "ledger.bin";

const GROUP_BIT: u32 = 1 << 31;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
const RECORD: usize = 24;

/// One acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// [`crate::engine::command::chan_key`] of its channel.
    pub channel: u64,
    pub id: u64,
    /// The sending user (global index into the population's users).
    pub sender: u32,
    pub to: To,
}

impl Entry {
    fn encode(&self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[..8].copy_from_slice(&self.channel.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&self.sender.to_le_bytes());
        let to = match self.to {
            To::User(u) => u,
            To::Group(g) => g | GROUP_BIT,
        };
        b[20..].copy_from_slice(&to.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Entry {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let to = u32_at(20);
        Entry {
            channel: u64_at(0),
            id: u64_at(8),
            sender: u32_at(16),
            to: if to & GROUP_BIT != 0 {
                To::Group(to & !GROUP_BIT)
            } else {
                To::User(to)
            },
        }
    }
}

/// The writing side: one buffered file behind a mutex (an append is a copy
/// into the buffer; the file is written 64 KiB at a time).
pub struct Ledger {
    path: PathBuf,
    out: Mutex<Option<BufWriter<File>>>,
    /// Why the ledger is unusable (the audit is then incomplete).
    failed: Mutex<Option<String>>,
    entries: std::sync::atomic::AtomicU64,
}

impl Ledger {
    /// Creates (truncates) `dir/ledger.bin`.
    pub fn create(dir: &Path) -> Ledger {
        let path = dir.join(FILE);
        let opened = std::fs::create_dir_all(dir).and_then(|_| File::create(&path));
        let (out, failed) = match opened {
            Ok(f) => (Some(BufWriter::with_capacity(64 * 1024, f)), None),
            Err(e) => (None, Some(format!("cannot create {}: {e}", path.display()))),
        };
        Ledger {
            path,
            out: Mutex::new(out),
            failed: Mutex::new(failed),
            entries: Default::default(),
        }
    }

    pub fn append(&self, e: &Entry) {
        let mut out = lock(&self.out);
        if let Some(w) = out.as_mut() {
            if let Err(err) = w.write_all(&e.encode()) {
                *lock(&self.failed) = Some(format!("writing {}: {err}", self.path.display()));
                *out = None;
                return;
            }
            self.entries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Flushes and closes the file; the reason it is unusable otherwise.
    pub fn finish(&self) -> Result<&Path, String> {
        if let Some(mut w) = lock(&self.out).take() {
            if let Err(e) = w.flush() {
                return Err(format!("writing {}: {e}", self.path.display()));
            }
        }
        if let Some(why) = lock(&self.failed).clone() {
            return Err(why);
        }
        Ok(&self.path)
    }

    /// Records appended so far.
    pub fn len(&self) -> u64 {
        self.entries.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a ledger file back.
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() % RECORD != 0 {
        return Err(format!("{} is truncated", path.display()));
    }
    Ok(bytes.chunks_exact(RECORD).map(Entry::decode).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::create(dir.path());
        let a = Entry {
            channel: u64::MAX - 3,
            id: 7,
            sender: 12,
            to: To::Group(5),
        };
        let b = Entry {
            channel: 1,
            id: 1 << 40,
            sender: 0,
            to: To::User(9),
        };
        l.append(&a);
        l.append(&b);
        let path = l.finish().unwrap().to_path_buf();
        assert_eq!(read(&path).unwrap(), vec![a, b]);
    }
}
