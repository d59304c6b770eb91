//! Append-only segment files holding the journal's encoded records; the sled index says where each one is.
//!
//! sled 0.34 keeps about as much memory as it has data (spacejam/sled#1410, #1093), so record payloads live
//! here and sled holds only small index entries. A group of records is written and `fdatasync`ed before
//! its index entries are written to sled; bytes past the last indexed record (a crash in between) are cut
//! off when the journal opens. Segments roll at [`SEGMENT_BYTES`] and are deleted once every record in
//! them is trimmed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A segment is closed and a new one started once it holds this much.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Records up to this size are gathered into one write.
const COALESCE_BYTES: usize = 1 << 20;

/// Where a record is, and what trimming needs to know without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub segment: u64,
    pub pos: u64,
    pub len: u32,
    pub journaled_unix_ms: i64,
}

struct Current {
    id: u64,
    file: File,
    len: u64,
}

pub struct Segments {
    dir: PathBuf,
    /// The segment being appended to; only the journal writer appends.
    current: Mutex<Current>,
}

fn segment_ids(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The records in segment bytes past the index's end (`valid_end`, as [`Segments::open`] takes it), before they
/// are cut off: (lowest, highest offset) of those that read whole, if any.
pub fn unindexed(dir: &Path, valid_end: Option<(u64, u64)>) -> std::io::Result<Option<(u64, u64)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut found: Option<(u64, u64)> = None;
    for id in segment_ids(dir)? {
        let from = match valid_end {
            Some((seg, _)) if id < seg => continue,
            Some((seg, end)) if id == seg => end as usize,
            _ => 0,
        };
        let bytes = std::fs::read(Segments::path(dir, id))?;
        let mut pos = from;
        while pos < bytes.len() {
            let Ok((record, n)) = common::codec::decode_prefix(&bytes[pos..]) else { break };
            let o = record.offset.0;
            found = Some(found.map_or((o, o), |(lo, hi)| (lo.min(o), hi.max(o))));
            pos += n;
        }
    }
    Ok(found)
}

impl Segments {
    fn path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id:016}.seg"))
    }

    /// Opens the segment directory. `valid_end` is the end of the last indexed record (segment, byte);
    /// anything after it is a write a crash interrupted and is removed.
    pub fn open(dir: &Path, valid_end: Option<(u64, u64)>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ids = segment_ids(dir)?;
        let (id, len) = match valid_end {
            Some((seg, end)) => {
                for &other in ids.iter().filter(|&&i| i > seg) {
                    std::fs::remove_file(Self::path(dir, other))?;
                }
                (seg, end)
            }
            // Nothing indexed: every existing segment is fully trimmed or never indexed.
            None => {
                for &other in &ids {
                    std::fs::remove_file(Self::path(dir, other))?;
                }
                (ids.last().map_or(1, |i| i + 1), 0)
            }
        };
        let file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(Self::path(dir, id))?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        File::open(dir)?.sync_all()?;
        Ok(Self { dir: dir.to_path_buf(), current: Mutex::new(Current { id, file, len }) })
    }

    /// Appends encoded records as one durable write; returns where each one went.
    pub fn append(&self, records: &[Vec<u8>], journaled_unix_ms: i64) -> std::io::Result<Vec<Location>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.len >= SEGMENT_BYTES {
            let id = cur.id + 1;
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(Self::path(&self.dir, id))?;
            File::open(&self.dir)?.sync_all()?;
            *cur = Current { id, file, len: 0 };
        }
        // Small records are gathered into writes of up to COALESCE_BYTES; a larger one is written as it is,
        // so that a fragment of many MiB is not copied once more.
        let mut out = Vec::with_capacity(records.len());
        let mut buf: Vec<u8> = Vec::new();
        let (mut buf_at, mut pos) = (cur.len, cur.len);
        for r in records {
            out.push(Location { segment: cur.id, pos, len: r.len() as u32, journaled_unix_ms });
            if !buf.is_empty() && buf.len() + r.len() > COALESCE_BYTES {
                cur.file.write_all_at(&buf, buf_at)?;
                buf.clear();
            }
            if r.len() > COALESCE_BYTES {
                cur.file.write_all_at(r, pos)?;
            } else {
                if buf.is_empty() {
                    buf_at = pos;
                }
                buf.extend_from_slice(r);
            }
            pos += r.len() as u64;
        }
        if !buf.is_empty() {
            cur.file.write_all_at(&buf, buf_at)?;
        }
        cur.file.sync_data()?;
        cur.len = pos;
        Ok(out)
    }

    /// Reads records in order, opening each segment once.
    pub fn read(&self, locations: &[Location]) -> std::io::Result<Vec<Vec<u8>>> {
        let mut open: Option<(u64, File)> = None;
        let mut out = Vec::with_capacity(locations.len());
        for loc in locations {
            if open.as_ref().is_none_or(|(id, _)| *id != loc.segment) {
                open = Some((loc.segment, File::open(Self::path(&self.dir, loc.segment))?));
            }
            let Some((_, file)) = &open else { unreachable!("opened above") };
            let mut bytes = vec![0; loc.len as usize];
            file.read_exact_at(&mut bytes, loc.pos)?;
            out.push(bytes);
        }
        Ok(out)
    }

    /// Writes `bytes` over the record at `loc` (a repair: same length) and makes it durable.
    pub fn overwrite(&self, loc: &Location, bytes: &[u8]) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(Self::path(&self.dir, loc.segment))?;
        file.write_all_at(bytes, loc.pos)?;
        file.sync_data()
    }

    /// Cuts the segments back to end at byte `end` of segment `segment` (later segments are deleted).
    pub fn truncate_to(&self, segment: u64, end: u64) -> std::io::Result<()> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for id in segment_ids(&self.dir)?.into_iter().filter(|&i| i > segment) {
            std::fs::remove_file(Self::path(&self.dir, id))?;
        }
        let file = OpenOptions::new().read(true).write(true).open(Self::path(&self.dir, segment))?;
        file.set_len(end)?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        *cur = Current { id: segment, file, len: end };
        Ok(())
    }

    /// Deletes every segment before `first_kept` (never the one being appended to).
    pub fn remove_before(&self, first_kept: u64) -> std::io::Result<()> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner()).id;
        for id in segment_ids(&self.dir)?.into_iter().filter(|&i| i < first_kept && i != current) {
            std::fs::remove_file(Self::path(&self.dir, id))?;
        }
        Ok(())
    }

    pub fn current_segment(&self) -> u64 {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).id
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        if let Ok(cur) = self.current.lock() {
            let _ = cur.file.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unindexed_bytes_and_segments_are_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Segments::open(dir.path(), None).expect("open");
        let locs = s.append(&[b"one".to_vec(), b"two".to_vec()], 5).expect("append");
        assert_eq!(locs[1], Location { segment: 1, pos: 3, len: 3, journaled_unix_ms: 5 });
        s.append(&[b"crashed".to_vec()], 6).expect("append");
        drop(s);
        // Only the first two were indexed before the "crash".
        let s = Segments::open(dir.path(), Some((1, 6))).expect("reopen");
        let next = s.append(&[b"three".to_vec()], 7).expect("append");
        assert_eq!(next[0].pos, 6);
        let back = s.read(&[locs[0], locs[1], next[0]]).expect("read");
        assert_eq!(back, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }
}
