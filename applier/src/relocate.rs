//! Continuing on another journal: when the reader's journal is lost (its disk or host gone) and a new reader
//! starts with an empty one, offsets mean nothing any more; the applier finds its place by GTID.
//!
//! The checkpoint names the journal its offset is in (`journal_id`, adopted at the first subscription) and
//! holds the GTID state applied: the last GTID per replication domain of the transactions committed on the
//! secondary, written in the same secondary transaction as their rows and their offset (after an initial copy
//! it is empty until transactions are applied again, since a copy's boundary has no GTID state).
//!
//! Before every subscription the stream asks the reader which journal it serves. On another journal the apply
//! loop rolls back any open fragmented transaction (its other fragments are in the old journal), asks the new
//! journal where a secondary with this GTID state continues (`Locate`), and moves the checkpoint there (new
//! journal id, that offset − 1, the same GTID state) before subscribing again.
//!
//! Exactly once: a transaction is in the checkpoint's GTID state iff it was committed on the secondary
//! (MariaDB numbers transactions in a domain in binlog order, and the state advances only in the transaction
//! that applied them). `Locate` answers the first offset whose transaction is not in the state, and only
//! after proving the new journal holds every later one: it must begin at or before the state in every domain
//! (its start GTID state, recorded when it was created) and be whole (nothing trimmed); otherwise the applier
//! says why at ERROR and asks again with backoff (the operator can replace a reader started too late), or
//! stops when only a re-copy can help (an initial copy since which no transaction was applied). Records
//! before that offset are all in the state (applied once already); from it on, none is. Records with the same
//! GTID (fragments, DDL and rows of one transaction) are consecutive, so a transaction is never split.
//! A copy in progress cannot move (its chunks' boundaries are offsets of the old journal): the applier stops
//! and asks for `--resync`.

use common::position::GtidState;
use common::proto::{GetInfoRequest, LocateRequest};

use crate::config::Config;
use crate::error::ApplyError;
use crate::reader_client::{self, refused};

/// The journal the reader serves now.
pub async fn journal_id(config: &Config) -> Result<String, ApplyError> {
    let mut client = reader_client::connect(config).await?;
    Ok(client.get_info(GetInfoRequest {}).await.map_err(refused("GetInfo"))?.into_inner().journal_id)
}

/// Where a secondary that applied `applied` continues in the reader's journal: the last offset already
/// applied there (the checkpoint's new offset), and the journal's id.
pub async fn locate(config: &Config, applied: &GtidState) -> Result<(u64, String), ApplyError> {
    if applied.is_empty() {
        return Err(ApplyError::Relocate {
            reason: "the checkpoint has no GTID state (an initial copy was made and no transaction applied since); \
                     re-copy the secondary (replica-applier --resync)"
                .into(),
        });
    }
    let mut client = reader_client::connect(config).await?;
    let request = LocateRequest { applied_gtid: applied.to_string() };
    match client.locate(request).await {
        Ok(r) => {
            let r = r.into_inner();
            Ok((r.offset.saturating_sub(1), r.journal_id))
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            Err(ApplyError::WrongJournal { reason: status.message().to_owned() })
        }
        Err(status) => Err(refused("Locate")(status)),
    }
}
