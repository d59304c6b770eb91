//! What can go wrong in the journal and its store, said so that an operator knows what to do.

use common::codec;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage (sled) failed; if this repeats at every start its files may be damaged (README: \"a damaged journal\")")]
    Storage(#[from] sled::Error),
    #[error("the JetStream journal failed: {0}. Check that the NATS cluster is up and has JetStream enabled (README: \"the journal on NATS JetStream\")")]
    JetStream(String),
    #[error("journal segment files failed")]
    Segment(#[from] std::io::Error),
    #[error("journal record at offset {offset} is unreadable")]
    Corrupt {
        offset: u64,
        #[source]
        source: codec::CodecError,
    },
    #[error(
        "journal record at offset {offset} ({place}) is damaged and is not served; the reader re-reads it from the \
         primary's binlog when it still has that transaction (README: \"a damaged journal\")"
    )]
    Damaged {
        offset: u64,
        place: String,
        #[source]
        source: codec::CodecError,
    },
    #[error(
        "the journal index says offset {offset} but the record there ({place}) is offset {found}: the index is damaged"
    )]
    Misplaced { offset: u64, found: u64, place: String },
    #[error("journal metadata is unreadable: {0}")]
    Meta(String),
    #[error("offset {offset} is outside the journal: valid offsets are {first} to {last}")]
    OutOfRange { offset: u64, first: u64, last: u64 },
    #[error(
        "this standby reader has read the journal up to offset {head} only, not {offset} yet: ask again, or ask the \
         active reader"
    )]
    Behind { offset: u64, head: u64 },
    #[error("unknown consumer {0:?}")]
    UnknownConsumer(String),
    #[error(
        "XA COMMIT {0} of a transaction prepared before this journal began: its changes were never read. \
         Start the journal before the XA PREPARE, or re-copy the secondaries"
    )]
    UnknownXa(String),
    #[error("invalid consumer name {0:?}: use 1 to 128 characters")]
    BadConsumerName(String),
}
