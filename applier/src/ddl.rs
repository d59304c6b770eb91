//! DDL as the secondary must run it, so that nothing re-executes logic whose effects the journal already
//! carries (a native replica neither fires triggers for row events nor runs replicated scheduled events):
//!
//! - `CREATE TRIGGER`: the body is wrapped in `IF @replica_applier IS NULL THEN … END IF`. The applier's
//!   sessions set `@replica_applier` (see [`crate::secondary::opts`]), so the trigger does nothing for them — the
//!   rows it wrote on the primary arrive as row changes of their own — while it fires as usual for every other
//!   session: after a promotion the secondary behaves like the primary with no step to take.
//! - `CREATE EVENT` / `ALTER EVENT`: the status becomes `DISABLE ON SLAVE` (shown as `SLAVESIDE_DISABLED`), as
//!   on a native replica; enable it after a promotion (`ALTER EVENT … ENABLE`).
//!
//! Everything else runs as the primary logged it.

/// A word, identifier or symbol of a statement, with where it is (byte offsets).
#[derive(Debug)]
struct Token {
    /// Upper-cased for words; empty for quoted strings and identifiers (never keywords).
    word: String,
    start: usize,
    end: usize,
}

/// The tokens of `sql` outside comments; strings and quoted identifiers are single tokens that match no keyword.
fn tokens(sql: &str) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with("/*") && !sql[i..].starts_with("/*!") && !sql[i..].starts_with("/*M!") {
            i = sql[i + 2..].find("*/").map_or(bytes.len(), |e| i + 2 + e + 2);
        } else if sql[i..].starts_with("-- ") || c == b'#' {
            i = sql[i..].find('\n').map_or(bytes.len(), |e| i + e + 1);
        } else if c == b'\'' || c == b'"' || c == b'`' {
            let start = i;
            i += 1;
            while i < bytes.len() {
                if bytes[i] == b'\\' && c != b'`' {
                    i += 2;
                } else if bytes[i] == c {
                    i += 1;
                    if i < bytes.len() && bytes[i] == c {
                        i += 1;
                    } else {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(Token { word: String::new(), start, end: i.min(bytes.len()) });
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'$') || bytes[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Token { word: sql[start..i].to_ascii_uppercase(), start, end: i });
        } else {
            // An executable comment's markers are skipped; their content is read as statement text.
            if sql[i..].starts_with("/*!") || sql[i..].starts_with("/*M!") {
                i += if sql[i..].starts_with("/*M!") { 4 } else { 3 };
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                continue;
            }
            if sql[i..].starts_with("*/") {
                i += 2;
                continue;
            }
            out.push(Token { word: (c as char).to_string(), start: i, end: i + 1 });
            i += 1;
        }
    }
    out
}

/// The object kind a `CREATE`/`ALTER` statement names (`TRIGGER`, `EVENT`, ...), and the index of its token.
fn object_kind(t: &[Token]) -> Option<(&str, usize)> {
    let verb = t.first()?.word.as_str();
    if verb != "CREATE" && verb != "ALTER" {
        return None;
    }
    t.iter().enumerate().take(16).skip(1).find_map(|(i, tok)| match tok.word.as_str() {
        kind @ ("TRIGGER" | "EVENT" | "TABLE" | "VIEW" | "PROCEDURE" | "FUNCTION" | "DATABASE" | "SCHEMA" | "INDEX"
        | "SEQUENCE" | "USER" | "ROLE" | "SERVER") => Some((kind, i)),
        _ => None,
    })
}

/// `statement` as the secondary must run it (see the module docs).
pub fn for_secondary(statement: &str) -> String {
    let t = tokens(statement);
    match object_kind(&t) {
        Some(("TRIGGER", _)) if t[0].word == "CREATE" => {
            inert_trigger(statement, &t).unwrap_or_else(|| statement.to_owned())
        }
        Some(("EVENT", at)) => disabled_event(statement, &t, at),
        _ => statement.to_owned(),
    }
}

/// `CREATE TRIGGER … FOR EACH ROW [FOLLOWS|PRECEDES other] body` with the body wrapped.
fn inert_trigger(statement: &str, t: &[Token]) -> Option<String> {
    let row = t.windows(3).position(|w| w[0].word == "FOR" && w[1].word == "EACH" && w[2].word == "ROW")? + 2;
    let mut body = row + 1;
    if t.get(body).is_some_and(|w| w.word == "FOLLOWS" || w.word == "PRECEDES") {
        body += 2;
    }
    let start = t.get(body)?.start;
    let text = statement[start..].trim_end().trim_end_matches(';').trim_end();
    Some(format!("{}IF @replica_applier IS NULL THEN {text}; END IF", &statement[..start]))
}

/// `CREATE EVENT` / `ALTER EVENT` whose status is `DISABLE ON SLAVE`: an `ENABLE` before the body is replaced; a
/// `CREATE` without a status gets one (before `COMMENT` or `DO`).
fn disabled_event(statement: &str, t: &[Token], kind_at: usize) -> String {
    let body = t.iter().skip(kind_at + 1).position(|w| w.word == "DO").map_or(t.len(), |p| p + kind_at + 1);
    let head = &t[kind_at + 1..body];
    if let Some(enable) = head.iter().find(|w| w.word == "ENABLE") {
        return format!("{}DISABLE ON SLAVE{}", &statement[..enable.start], &statement[enable.end..]);
    }
    if t[0].word == "ALTER" || head.iter().any(|w| w.word == "DISABLE") {
        return statement.to_owned();
    }
    let at = head.iter().find(|w| w.word == "COMMENT").map(|w| w.start).or_else(|| t.get(body).map(|w| w.start));
    match at {
        Some(at) => format!("{}DISABLE ON SLAVE {}", &statement[..at], &statement[at..]),
        None => statement.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_body_does_nothing_for_the_applier_and_keeps_its_order_clause() {
        assert_eq!(
            for_secondary("CREATE DEFINER=`root`@`localhost` TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW INSERT INTO audit (v) VALUES (NEW.v)"),
            "CREATE DEFINER=`root`@`localhost` TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW IF @replica_applier IS NULL THEN \
             INSERT INTO audit (v) VALUES (NEW.v); END IF"
        );
        assert_eq!(
            for_secondary(
                "create trigger b before update on t for each row follows a begin set new.v = 1; set new.w = 2; end;"
            ),
            "create trigger b before update on t for each row follows a IF @replica_applier IS NULL THEN \
             begin set new.v = 1; set new.w = 2; end; END IF"
        );
    }

    #[test]
    fn words_in_strings_and_names_are_not_keywords() {
        let s = "CREATE TRIGGER `for each row` BEFORE INSERT ON t FOR EACH ROW SET NEW.s = 'for each row'";
        assert_eq!(
            for_secondary(s),
            "CREATE TRIGGER `for each row` BEFORE INSERT ON t FOR EACH ROW IF @replica_applier IS NULL THEN \
             SET NEW.s = 'for each row'; END IF"
        );
        let table = "CREATE TABLE t (`trigger` INT, e ENUM('ENABLE'))";
        assert_eq!(for_secondary(table), table);
    }

    #[test]
    fn replicated_events_are_created_disabled_on_the_secondary() {
        assert_eq!(
            for_secondary("CREATE EVENT e ON SCHEDULE EVERY 1 SECOND DO INSERT INTO t VALUES (1)"),
            "CREATE EVENT e ON SCHEDULE EVERY 1 SECOND DISABLE ON SLAVE DO INSERT INTO t VALUES (1)"
        );
        assert_eq!(
            for_secondary("CREATE EVENT e ON SCHEDULE EVERY 1 SECOND ON COMPLETION PRESERVE ENABLE COMMENT 'x' DO ALTER TABLE t ENABLE KEYS"),
            "CREATE EVENT e ON SCHEDULE EVERY 1 SECOND ON COMPLETION PRESERVE DISABLE ON SLAVE COMMENT 'x' DO ALTER TABLE t ENABLE KEYS"
        );
        assert_eq!(
            for_secondary("CREATE EVENT e ON SCHEDULE AT NOW() COMMENT 'do it' DO DELETE FROM t"),
            "CREATE EVENT e ON SCHEDULE AT NOW() DISABLE ON SLAVE COMMENT 'do it' DO DELETE FROM t"
        );
        assert_eq!(for_secondary("ALTER EVENT e ENABLE"), "ALTER EVENT e DISABLE ON SLAVE");
        assert_eq!(for_secondary("ALTER EVENT e RENAME TO f"), "ALTER EVENT e RENAME TO f");
        assert_eq!(for_secondary("DROP EVENT e"), "DROP EVENT e");
    }
}
