//! Online verification: tables compared with the primary chunk by chunk while replication goes on, differences
//! narrowed to rows and, when asked, repaired (like Vitess VDiff, anchored to the journal).
//!
//! # Why a moving target gives no false positives
//!
//! The reader checksums a few consecutive key ranges of a table in one consistent snapshot of the primary and
//! reports the snapshot's journal *boundary* B: the snapshot holds exactly the records up to B (the reader's
//! `snapshot` module, as for the initial copy). The applier compares them with the secondary **as of the same
//! offset B**. It can, because it is the secondary's only writer and its checkpoint moves in the same
//! transactions as the data: before asking, the verifier sets a *floor* at the last offset received (which
//! every later snapshot holds, see [`crate::copy`]), raises it to B when B is known, waits until the
//! checkpoint is B, begins `START TRANSACTION WITH CONSISTENT SNAPSHOT` on a connection of its own, reads the
//! checkpoint *inside* that snapshot (it must say B, or the round is taken again), and only then lets the apply
//! loop go on. Both sides then hold the same transactions, so equal tables give equal checksums whatever is
//! written meanwhile; the apply loop waits only for the snapshot to begin.
//!
//! A chunk is the primary's rows after the previous chunk's last key up to its own last key (at most
//! `--verify-chunk-rows` rows); the secondary's rows of the same key range are checksummed, and the last chunk
//! of the table reaches to the end of the key, so rows only the secondary has are seen too. A chunk's checksum
//! is its row count and the wrapping sum of xxh3-128 hashes of every value as MariaDB returns it
//! ([`common::chunk`]): NULL is not the empty string, BINARY keeps its trailing bytes, `'a'` is not `'A'` under
//! a case-insensitive collation, DATETIME keeps its microseconds, DECIMAL its scale.
//!
//! A chunk that differs is narrowed to rows at a new boundary B' (the reader returns the rows and their hashes
//! in a snapshot at B'): with the apply loop held at B', the secondary's rows of the range are read and matched
//! by key, and with `repair` the differing rows are deleted and the primary's rows written (REPLACE) in one
//! transaction that first checks the checkpoint is still B' — the same argument as the initial copy's chunks.
//! A table without a primary or unique NOT NULL key is one chunk, checksummed whole; it cannot be narrowed to
//! rows, so a difference is reported for the table, and `repair` re-copies the table (`ResyncTable`).
//!
//! # Files
//!
//! - [`board`]: the verification's state, shared with the admin service (and kept in `replica_meta.verify`)
//! - [`run`]: the verifier task: tables one after another, rounds of chunks at a boundary, rate limit
//! - [`oneshot`]: `replica-applier verify`, the one-shot client for cron jobs and CI pipelines
//! - [`secondary`]: the secondary's side: checksums of key ranges, rows matched by key, repairs

pub mod board;
pub mod oneshot;
pub mod run;
pub mod secondary;
