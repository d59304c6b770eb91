//! Which schemas and tables are journaled: include/exclude lists of `schema` or `schema.table` patterns
//! with `*` wildcards. System schemas are always excluded.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    schema: String,
    table: String,
}

impl Pattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty pattern".into());
        }
        let (schema, table) = s.split_once('.').unwrap_or((s, "*"));
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(format!("pattern {s:?} is not SCHEMA or SCHEMA.TABLE (with * wildcards)"));
        }
        Ok(Self { schema: schema.to_owned(), table: table.to_owned() })
    }

    fn matches(&self, schema: &str, table: Option<&str>) -> bool {
        glob(&self.schema, schema) && table.is_none_or(|t| glob(&self.table, t))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The filter in force, which a SIGHUP may replace while the reader runs.
#[derive(Debug, Clone, Default)]
pub struct LiveFilter(std::sync::Arc<std::sync::RwLock<Filter>>);

impl LiveFilter {
    pub fn new(filter: Filter) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(filter)))
    }

    pub fn table(&self, schema: &str, table: &str) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).table(schema, table)
    }

    pub fn schema(&self, schema: &str) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).schema(schema)
    }

    pub fn replace(&self, filter: Filter) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = filter;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Filter {
    /// Comma-separated pattern lists; an empty include list means every user schema.
    pub fn new(include: &str, exclude: &str) -> Result<Self, String> {
        let parse = |list: &str| {
            list.split(',').filter(|p| !p.trim().is_empty()).map(Pattern::parse).collect::<Result<Vec<_>, _>>()
        };
        Ok(Self { include: parse(include)?, exclude: parse(exclude)? })
    }

    /// Whether changes to `schema.table` are journaled.
    pub fn table(&self, schema: &str, table: &str) -> bool {
        self.admits(schema, Some(table))
    }

    /// Whether statements about `schema` as a whole (CREATE/DROP DATABASE) are journaled.
    pub fn schema(&self, schema: &str) -> bool {
        self.admits(schema, None)
    }

    fn admits(&self, schema: &str, table: Option<&str>) -> bool {
        if SYSTEM_SCHEMAS.iter().any(|s| s.eq_ignore_ascii_case(schema)) {
            return false;
        }
        let included = self.include.is_empty()
            || self.include.iter().any(|p| p.matches(schema, table) || (table.is_none() && glob(&p.schema, schema)));
        // A table-level exclude does not exclude its whole schema's statements.
        let excluded = self.exclude.iter().any(|p| match table {
            Some(_) => p.matches(schema, table),
            None => p.table == "*" && glob(&p.schema, schema),
        });
        included && !excluded
    }
}

/// At each SIGHUP, reads the table filters again (`include`/`exclude` in the config file, else
/// `REPLICA_INCLUDE`/`REPLICA_EXCLUDE` in `.env`) and applies them from the next transaction on. A table
/// newly included has no history in the journal: re-copy it on each secondary (ResyncTable).
pub async fn reload_on_sighup(filter: LiveFilter, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            h = hup.recv() => if h.is_none() { return },
        }
        let file = common::config_file::path_from_args();
        let include = common::lifecycle::reloaded_setting(file.as_deref(), "include", "REPLICA_INCLUDE");
        let exclude = common::lifecycle::reloaded_setting(file.as_deref(), "exclude", "REPLICA_EXCLUDE");
        match (include, exclude) {
            (Ok(None), Ok(None)) => info!("SIGHUP: no filters in the config file or .env; unchanged"),
            (Ok(include), Ok(exclude)) => {
                let (include, exclude) = (include.unwrap_or_default(), exclude.unwrap_or_default());
                match Filter::new(&include, &exclude) {
                    Ok(f) => {
                        filter.replace(f);
                        info!(include = %include, exclude = %exclude, "SIGHUP: table filters reloaded");
                    }
                    Err(e) => warn!(error = %e, "SIGHUP: invalid filters; unchanged"),
                }
            }
            (Err(e), _) | (_, Err(e)) => warn!(error = %e, "SIGHUP: filters unchanged"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shells() {
        assert!(glob("app_*", "app_eu"));
        assert!(glob("*", ""));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c", "abd"));
        assert!(!glob("abc", "abcd"));
        assert!(glob("*_log", "audit_log"));
    }

    #[test]
    fn default_takes_every_user_schema_and_no_system_schema() {
        let f = Filter::new("", "").expect("valid");
        assert!(f.table("shop", "orders"));
        assert!(!f.table("mysql", "user"));
        assert!(!f.schema("performance_schema"));
    }

    #[test]
    fn include_and_exclude_combine() {
        let f = Filter::new("shop,app_*.users", "shop.*_tmp,app_test").expect("valid");
        assert!(f.table("shop", "orders"));
        assert!(!f.table("shop", "orders_tmp"));
        assert!(f.table("app_eu", "users"));
        assert!(!f.table("app_eu", "orders"));
        assert!(!f.table("app_test", "users"));
        assert!(f.schema("shop"));
        assert!(!f.schema("other"));
        assert!(Filter::new("a.b.c", "").is_err());
    }
}
