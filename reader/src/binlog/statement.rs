//! Classifies statements the primary logged as QUERY events: transaction control, DDL to journal, account
//! and maintenance statements to leave out, and statement-based DML that the reader must refuse.

/// What a logged statement means for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, ROLLBACK TO, RELEASE SAVEPOINT: row images already reflect them.
    Savepoint,
    /// XA START / XA END: bracket the changes of a prepared XA transaction.
    XaBracket,
    /// XA COMMIT of a prepared transaction, with its normalised xid.
    XaCommit(String),
    /// XA ROLLBACK of a prepared transaction, with its normalised xid.
    XaRollback(String),
    /// Schema change to journal. `schema`/`table` name the object when the statement qualifies it.
    Ddl {
        schema: Option<String>,
        table: Option<String>,
    },
    /// Not data: accounts, privileges, maintenance, temporary tables. Logged and left out.
    NotData(&'static str),
    /// INSERT/UPDATE/DELETE/... logged as a statement: cannot be journaled as rows.
    StatementDml,
    /// Anything else.
    Unknown,
}

fn strip_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("/*") {
            // Executable comments (/*!50001 ... */) hold real statement text; MariaDB logs them for views.
            if rest.starts_with('!') || rest.starts_with("M!") {
                return s;
            }
            match rest.find("*/") {
                Some(end) => s = &rest[end + 2..],
                None => return "",
            }
        } else if s.starts_with("--") || s.starts_with('#') {
            match s.find('\n') {
                Some(end) => s = &s[end + 1..],
                None => return "",
            }
        } else {
            return s;
        }
    }
}

struct Tokens<'a> {
    s: &'a str,
}

impl<'a> Tokens<'a> {
    /// The next word or identifier; backquoted identifiers are returned without quotes.
    fn next(&mut self) -> Option<String> {
        self.s = strip_comments(self.s);
        let s = self.s;
        if let Some(rest) = s.strip_prefix('`') {
            let mut out = String::new();
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '`' {
                    if rest[i + 1..].starts_with('`') {
                        out.push('`');
                        chars.next();
                    } else {
                        self.s = &rest[i + 1..];
                        return Some(out);
                    }
                } else {
                    out.push(c);
                }
            }
            return None;
        }
        if let Some(rest) = s.strip_prefix('.') {
            self.s = rest;
            return Some(".".into());
        }
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
        if end == 0 {
            // Punctuation such as `=` or `(`: one character per token.
            let c = s.chars().next()?;
            self.s = &s[c.len_utf8()..];
            return Some(c.to_string());
        }
        self.s = &s[end..];
        Some(s[..end].to_owned())
    }

    fn peek_is_dot(&self) -> bool {
        strip_comments(self.s).starts_with('.')
    }

    /// `name` or `schema.name`.
    fn object(&mut self) -> (Option<String>, Option<String>) {
        let Some(first) = self.next() else { return (None, None) };
        if self.peek_is_dot() {
            self.next();
            (Some(first), self.next())
        } else {
            (None, Some(first))
        }
    }

    fn skip_if_exists(&mut self) -> Option<String> {
        let mut w = self.next()?;
        if w.eq_ignore_ascii_case("IF") {
            w = self.next()?;
            if w.eq_ignore_ascii_case("NOT") {
                self.next()?;
            }
            w = self.next()?;
        }
        Some(w)
    }
}

pub fn classify(statement: &str) -> Statement {
    let text = strip_comments(statement);
    let mut t = Tokens { s: text };
    let Some(first) = t.next() else { return Statement::Unknown };
    let first = first.to_ascii_uppercase();
    let second = {
        let mut peek = Tokens { s: t.s };
        peek.next().map(|w| w.to_ascii_uppercase()).unwrap_or_default()
    };
    match first.as_str() {
        "BEGIN" => Statement::Begin,
        "COMMIT" => Statement::Commit,
        "ROLLBACK" if second == "TO" => Statement::Savepoint,
        "ROLLBACK" => Statement::Rollback,
        "SAVEPOINT" | "RELEASE" => Statement::Savepoint,
        "XA" => match second.as_str() {
            "COMMIT" => Statement::XaCommit(xa_xid(text, "COMMIT")),
            "ROLLBACK" => Statement::XaRollback(xa_xid(text, "ROLLBACK")),
            _ => Statement::XaBracket,
        },
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD" => Statement::StatementDml,
        "GRANT" | "REVOKE" => Statement::NotData("privileges"),
        "FLUSH" | "ANALYZE" | "OPTIMIZE" | "REPAIR" | "CHECK" | "INSTALL" | "UNINSTALL" | "SET" | "DO" => {
            Statement::NotData("maintenance or session statement")
        }
        "TRUNCATE" => {
            let mut w = t.next();
            if w.as_deref().is_some_and(|w| w.eq_ignore_ascii_case("TABLE")) {
                w = None;
            }
            let (schema, table) = match w {
                Some(name) if t.peek_is_dot() => {
                    t.next();
                    (Some(name), t.next())
                }
                Some(name) => (None, Some(name)),
                None => t.object(),
            };
            Statement::Ddl { schema, table }
        }
        "CREATE" | "ALTER" | "DROP" | "RENAME" => ddl(&mut t),
        _ => Statement::Unknown,
    }
}

/// The xid of `XA COMMIT X'..',X'..',n`, normalised as [`xid_key`] builds it.
fn xa_xid(text: &str, verb: &str) -> String {
    let upper = text.to_ascii_uppercase();
    let rest = upper.find(verb).map(|i| &upper[i + verb.len()..]).unwrap_or("");
    rest.split_whitespace().next().unwrap_or("").to_owned()
}

/// The xid of an XA_PREPARE event's body (`one_phase u8, format_id u32, gtrid_len u32, bqual_len u32, data`),
/// in the form the primary logs it in `XA COMMIT`: `X'<gtrid hex>',X'<bqual hex>',<format id>`.
pub fn xid_key(body: &[u8]) -> Option<String> {
    let u32_at = |at: usize| body.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let format = u32_at(1)?;
    let gtrid = u32_at(5)? as usize;
    let bqual = u32_at(9)? as usize;
    let data = body.get(13..13 + gtrid + bqual)?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    Some(format!("X'{}',X'{}',{}", hex(&data[..gtrid]), hex(&data[gtrid..]), format))
}

fn ddl(t: &mut Tokens<'_>) -> Statement {
    // Skip modifiers until the object kind.
    let mut kind = String::new();
    for _ in 0..12 {
        let Some(w) = t.next() else { return Statement::Ddl { schema: None, table: None } };
        let w = w.to_ascii_uppercase();
        match w.as_str() {
            "TEMPORARY" => return Statement::NotData("temporary table"),
            "USER" | "ROLE" => return Statement::NotData("account"),
            "SERVER" => return Statement::NotData("server definition"),
            "TABLE" | "DATABASE" | "SCHEMA" | "VIEW" | "INDEX" | "TRIGGER" | "PROCEDURE" | "FUNCTION" | "EVENT"
            | "SEQUENCE" | "TABLES" => {
                kind = w;
                break;
            }
            _ => {}
        }
    }
    if kind.is_empty() {
        return Statement::Ddl { schema: None, table: None };
    }
    match kind.as_str() {
        "DATABASE" | "SCHEMA" => {
            let name = t.skip_if_exists();
            Statement::Ddl { schema: name, table: None }
        }
        "INDEX" => {
            // CREATE INDEX name ON tbl / DROP INDEX name ON tbl
            while let Some(w) = t.next() {
                if w.eq_ignore_ascii_case("ON") {
                    let (schema, table) = t.object();
                    return Statement::Ddl { schema, table };
                }
            }
            Statement::Ddl { schema: None, table: None }
        }
        _ => {
            let Some(first) = t.skip_if_exists() else { return Statement::Ddl { schema: None, table: None } };
            if t.peek_is_dot() {
                t.next();
                Statement::Ddl { schema: Some(first), table: t.next() }
            } else {
                Statement::Ddl { schema: None, table: Some(first) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ddl(schema: Option<&str>, table: Option<&str>) -> Statement {
        Statement::Ddl { schema: schema.map(Into::into), table: table.map(Into::into) }
    }

    #[test]
    fn xa_prepare_bodies_give_the_commit_statement_xid() {
        let mut body = vec![0u8];
        body.extend(1u32.to_le_bytes());
        body.extend(2u32.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        body.extend(b"x1");
        assert_eq!(xid_key(&body).as_deref(), Some("X'7831',X'',1"));
        assert_eq!(xid_key(&body[..10]), None);
    }

    #[test]
    fn statements_are_classified() {
        let cases = [
            ("BEGIN", Statement::Begin),
            ("COMMIT", Statement::Commit),
            ("ROLLBACK", Statement::Rollback),
            ("ROLLBACK TO SAVEPOINT a", Statement::Savepoint),
            ("SAVEPOINT `a`", Statement::Savepoint),
            ("XA COMMIT X'7831',X'',1", Statement::XaCommit("X'7831',X'',1".into())),
            ("XA ROLLBACK X'7a',X'',1", Statement::XaRollback("X'7A',X'',1".into())),
            ("XA END X'7831',X'',1", Statement::XaBracket),
            ("insert into t values (1)", Statement::StatementDml),
            ("GRANT SELECT ON *.* TO x", Statement::NotData("privileges")),
            ("CREATE USER 'a'@'%'", Statement::NotData("account")),
            ("DROP TEMPORARY TABLE IF EXISTS `t`", Statement::NotData("temporary table")),
            ("CREATE TABLE t (id int)", ddl(None, Some("t"))),
            ("create table if not exists `s`.`t x` (id int)", ddl(Some("s"), Some("t x"))),
            ("/* c */ ALTER TABLE s.t ADD c int", ddl(Some("s"), Some("t"))),
            ("DROP TABLE IF EXISTS `t` /* generated by server */", ddl(None, Some("t"))),
            ("RENAME TABLE a TO b", ddl(None, Some("a"))),
            ("TRUNCATE TABLE s.t", ddl(Some("s"), Some("t"))),
            ("TRUNCATE t", ddl(None, Some("t"))),
            ("CREATE DATABASE IF NOT EXISTS shop", ddl(Some("shop"), None)),
            ("DROP SCHEMA shop", ddl(Some("shop"), None)),
            ("CREATE UNIQUE INDEX i ON s.t (c)", ddl(Some("s"), Some("t"))),
            ("CREATE OR REPLACE ALGORITHM=UNDEFINED VIEW v AS SELECT 1", ddl(None, Some("v"))),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{sql}");
        }
    }
}
