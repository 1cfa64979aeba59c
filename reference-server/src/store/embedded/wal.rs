//! The embedded backend's write-ahead log: what makes an accept durable before
//! the redb commit that holds it.
//!
//! The writer thread keeps one redb write transaction open across many batches
//! and commits it (a *checkpoint*) about once a second. Between checkpoints an
//! accepted message is durable because its record is in this log, appended and
//! `fdatasync`ed once per batch: one sequential write of a few kilobytes instead
//! of a copy-on-write commit that rewrites one B-tree leaf per inbox entry. Each
//! checkpoint stores the last record's number (`META["wal_lsn"]`) in the same
//! transaction, and the log is then emptied.
//!
//! After a crash, [`read`] returns the records that follow the last checkpoint
//! and the store runs them again, in order, on the checkpoint's state: an
//! accept is deterministic given that state (ids and inbox seqs come from the
//! heads, members from the groups table, and nothing else writes between
//! checkpoints: every other durable write commits its batch at once), so the
//! replay gives every message the id and seqs its sender was acked with.
//!
//! A record: `len: u32`, `crc32(body): u32`, then the body: `lsn: u64`, `from`,
//! `from_device`, `ts` (`u64` each), the members (`u32` count, `u64` each), and
//! `channel`, `client_msg_id`, `text` (`u32` length and UTF-8 bytes each), all
//! little-endian. Reading stops at the first record that is cut short, fails its
//! checksum or does not follow its predecessor's number: a torn tail is a batch
//! whose `fdatasync` never returned, so none of its senders was acked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::tables::OwnedMessage;

/// Bytes before a record's body: its length and checksum.
const HEADER: usize = 8;
/// Largest body [`read`] accepts (a frame is at most a few hundred KiB).
const MAX_BODY: usize = 64 << 20;

/// The open log: appends go to its end.
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Bytes known to be in the file (synced).
    len: u64,
    /// Records encoded since the last sync.
    pending: Vec<u8>,
    /// Number of the last record encoded (synced or pending).
    last_lsn: u64,
    /// Number of the last synced record.
    synced_lsn: u64,
}

impl Wal {
    /// Opens `path` for appending, emptied: call after [`read`]'s records are
    /// durable elsewhere. Numbering goes on after `last_lsn`.
    pub(super) fn create(path: &Path, last_lsn: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        file.set_len(0)?;
        file.sync_all()?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: 0,
            pending: Vec::new(),
            last_lsn,
            synced_lsn: last_lsn,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes one accept for the next [`Wal::sync`]; returns its number.
    pub(super) fn push(&mut self, msg: &OwnedMessage) -> u64 {
        self.last_lsn += 1;
        encode(&mut self.pending, self.last_lsn, msg);
        self.last_lsn
    }

    /// True if records wait for [`Wal::sync`].
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Appends the pending records and waits until they are on disk. On an
    /// error the file is cut back to what it held before, the pending records
    /// are dropped and their numbers given back.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                self.synced_lsn = self.last_lsn;
                Ok(())
            }
            Err(e) => {
                self.discard();
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Drops the records encoded since the last sync.
    pub(super) fn discard(&mut self) {
        self.pending.clear();
        self.last_lsn = self.synced_lsn;
    }

    /// Number of the last record on disk: what a checkpoint stores.
    pub(super) fn synced_lsn(&self) -> u64 {
        self.synced_lsn
    }

    /// Bytes on disk since the last [`Wal::reset`].
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log once a checkpoint holds everything in it.
    pub(super) fn reset(&mut self) -> std::io::Result<()> {
        debug_assert!(self.pending.is_empty());
        if self.len > 0 {
            self.file.set_len(0)?;
            self.len = 0;
        }
        Ok(())
    }
}

/// The records in the log at `path`, in order, up to the first one that is cut
/// short, damaged or out of sequence. A missing file holds none.
pub(super) fn read(path: &Path) -> std::io::Result<Vec<(u64, OwnedMessage)>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut out: Vec<(u64, OwnedMessage)> = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_BODY || bytes.len() - at - HEADER < len {
            break;
        }
        let body = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some((lsn, msg)) = decode(body) else {
            break;
        };
        if out.last().is_some_and(|(prev, _)| lsn != prev + 1) {
            break;
        }
        out.push((lsn, msg));
        at += HEADER + len;
    }
    Ok(out)
}

fn encode(out: &mut Vec<u8>, lsn: u64, m: &OwnedMessage) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    for v in [lsn, m.from, m.from_device, m.ts] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(m.members.len() as u32).to_le_bytes());
    for &member in &m.members {
        out.extend_from_slice(&member.to_le_bytes());
    }
    for s in [&m.channel, &m.client_msg_id, &m.text] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads a record's body; `None` if it does not parse.
fn decode(body: &[u8]) -> Option<(u64, OwnedMessage)> {
    let mut r = Reader { rest: body };
    let lsn = r.u64()?;
    let from = r.u64()?;
    let from_device = r.u64()?;
    let ts = r.u64()?;
    let n = r.u32()? as usize;
    if n > r.rest.len() / 8 {
        return None;
    }
    let members = (0..n).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
    let channel = r.string()?;
    let client_msg_id = r.string()?;
    let text = r.string()?;
    if !r.rest.is_empty() {
        return None;
    }
    Some((
        lsn,
        OwnedMessage {
            channel,
            members,
            from,
            from_device,
            client_msg_id,
            text,
            ts,
        },
    ))
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u64) -> OwnedMessage {
        OwnedMessage {
            channel: format!("g:{i}"),
            members: vec![1, 2, i],
            from: 1,
            from_device: 7,
            client_msg_id: format!("c{i}"),
            text: "héllo ".repeat(i as usize),
            ts: 1_000 + i,
        }
    }

    fn same(a: &OwnedMessage, b: &OwnedMessage) -> bool {
        (
            &a.channel,
            &a.members,
            a.from,
            a.from_device,
            &a.client_msg_id,
            &a.text,
            a.ts,
        ) == (
            &b.channel,
            &b.members,
            b.from,
            b.from_device,
            &b.client_msg_id,
            &b.text,
            b.ts,
        )
    }

    #[test]
    fn records_read_back_in_order_across_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut wal = Wal::create(&path, 41).unwrap();
        for i in 1..=3 {
            assert_eq!(wal.push(&msg(i)), 41 + i);
        }
        wal.sync().unwrap();
        wal.push(&msg(4));
        wal.sync().unwrap();
        let back = read(&path).unwrap();
        assert_eq!(
            back.iter().map(|r| r.0).collect::<Vec<_>>(),
            [42, 43, 44, 45]
        );
        for (i, (_, m)) in back.iter().enumerate() {
            assert!(same(m, &msg(i as u64 + 1)));
        }
        assert_eq!(wal.synced_lsn(), 45);
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut wal = Wal::create(&path, 0).unwrap();
        for i in 1..=3 {
            wal.push(&msg(i));
        }
        wal.sync().unwrap();
        let full = std::fs::read(&path).unwrap();
        // Cut inside the third record: two remain.
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        // A flipped byte in the second record's body: one remains.
        let mut damaged = full.clone();
        let second = HEADER + u32::from_le_bytes(full[..4].try_into().unwrap()) as usize;
        damaged[second + HEADER + 12] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        // Garbage after the records is ignored.
        let mut tail = full.clone();
        tail.extend_from_slice(&[0xff; 40]);
        std::fs::write(&path, &tail).unwrap();
        assert_eq!(read(&path).unwrap().len(), 3);
    }

    #[test]
    fn a_record_out_of_sequence_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut a = Vec::new();
        encode(&mut a, 5, &msg(1));
        encode(&mut a, 6, &msg(2));
        encode(&mut a, 3, &msg(3));
        std::fs::write(&path, &a).unwrap();
        assert_eq!(
            read(&path).unwrap().iter().map(|r| r.0).collect::<Vec<_>>(),
            [5, 6]
        );
    }

    #[test]
    fn reset_empties_and_numbering_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut wal = Wal::create(&path, 0).unwrap();
        wal.push(&msg(1));
        wal.sync().unwrap();
        wal.reset().unwrap();
        assert!(read(&path).unwrap().is_empty());
        wal.push(&msg(2));
        wal.sync().unwrap();
        assert_eq!(read(&path).unwrap()[0].0, 2);
        // Discarded records give their numbers back.
        wal.push(&msg(3));
        wal.discard();
        assert_eq!(wal.push(&msg(3)), 3);
        assert!(read(Path::new("/nonexistent/chatscale/log"))
            .unwrap()
            .is_empty());
    }
}
