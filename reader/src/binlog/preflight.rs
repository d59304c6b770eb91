//! Checks, before streaming, that the primary logs what the reader needs, naming the setting and the fix.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use common::position::Gtid;

use crate::binlog::failover;
use crate::error::ReaderError;

/// What the reader learns about the primary while checking it.
#[derive(Debug, Clone)]
pub struct PrimaryInfo {
    pub server_id: u32,
    pub binlog_basename: String,
    pub version: String,
    pub gtid_binlog_pos: String,
    /// `@@gtid_binlog_state`: the last GTID of every server id in every domain of its binlog.
    pub gtid_binlog_state: Vec<Gtid>,
}

type Settings = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

pub async fn check(conn: &mut Conn) -> Result<PrimaryInfo, ReaderError> {
    let (log_bin, format, image, metadata, compress): Settings = conn
        .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@log_bin_compress")
        .await
        .map_err(ReaderError::Connect)?
        .ok_or_else(|| ReaderError::Preflight("the primary returned no settings".into()))?;
    let want = |name: &str, got: &Option<String>, want: &str, why: &str| -> Result<(), ReaderError> {
        let got = got.clone().unwrap_or_default();
        if got.eq_ignore_ascii_case(want) {
            Ok(())
        } else {
            Err(ReaderError::Preflight(format!(
                "{name} is {got:?} but must be {want} ({why}); fix: SET GLOBAL {name}={want} and add \
                 {name}={want} under [mariadbd] in the primary's my.cnf"
            )))
        }
    };
    if !matches!(log_bin.as_deref(), Some("1") | Some("ON")) {
        return Err(ReaderError::Preflight(
            "binary logging is off; fix: start the primary with log_bin=<basename> (needs a restart)".into(),
        ));
    }
    want("binlog_format", &format, "ROW", "statement-based events cannot be turned into row changes")?;
    want("binlog_row_image", &image, "FULL", "updates and deletes need every column of the before image")?;
    want(
        "binlog_row_metadata",
        &metadata,
        "FULL",
        "without it column names, signedness and ENUM/SET values are missing",
    )?;
    if matches!(compress.as_deref(), Some("1") | Some("ON")) {
        return Err(ReaderError::Preflight(
            "log_bin_compress is ON: compressed events cannot be decoded and the reader will not skip them; fix: \
             SET GLOBAL log_bin_compress=OFF and log_bin_compress=OFF in my.cnf, and start the reader at a \
             position after the last compressed event"
                .into(),
        ));
    }
    let grants: Vec<String> = conn.query("SHOW GRANTS FOR CURRENT_USER()").await.map_err(ReaderError::Connect)?;
    let global: Vec<String> =
        grants.iter().filter(|g| g.contains(" ON *.* ")).map(|g| g.to_ascii_uppercase()).collect();
    let has = |p: &str| global.iter().any(|g| g.contains("ALL PRIVILEGES") || g.contains(p));
    let mut missing = Vec::new();
    if !has("REPLICATION SLAVE") {
        missing.push("REPLICATION SLAVE");
    }
    if !has("BINLOG MONITOR") && !has("REPLICATION CLIENT") && !has("SUPER") {
        missing.push("BINLOG MONITOR (REPLICATION CLIENT)");
    }
    if !has("SELECT") {
        missing.push("SELECT");
    }
    if !missing.is_empty() {
        return Err(ReaderError::Preflight(format!(
            "the replication user lacks {}; fix: GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO <user>",
            missing.join(", ")
        )));
    }
    type Identity = (u32, Option<String>, String, Option<String>, Option<String>);
    let (server_id, basename, version, gtid, state): Identity = conn
        .query_first("SELECT @@server_id, @@log_bin_basename, VERSION(), @@gtid_binlog_pos, @@gtid_binlog_state")
        .await
        .map_err(ReaderError::Connect)?
        .ok_or_else(|| ReaderError::Preflight("the primary returned no identity".into()))?;
    let basename = basename.unwrap_or_default();
    let basename = basename.rsplit('/').next().unwrap_or_default().to_owned();
    let gtid_binlog_state = failover::parse_list(state.as_deref().unwrap_or_default())
        .map_err(|e| ReaderError::Preflight(format!("@@gtid_binlog_state: {e}")))?;
    Ok(PrimaryInfo {
        server_id,
        binlog_basename: basename,
        version,
        gtid_binlog_pos: gtid.unwrap_or_default(),
        gtid_binlog_state,
    })
}
