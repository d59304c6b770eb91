//! The configuration reference in the README, generated from a binary's clap definitions so it cannot drift.

/// A Markdown table of every option: environment variable, flag, default and help.
pub fn markdown(cmd: &clap::Command) -> String {
    let mut out = String::from("| variable | flag | default | meaning |\n| --- | --- | --- | --- |\n");
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
        let default = if arg.is_hide_default_value_set() {
            "(hidden)".to_owned()
        } else {
            let values: Vec<String> =
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            match values.as_slice() {
                [] => String::new(),
                [v] if v.is_empty() => "(empty)".to_owned(),
                vs => format!("`{}`", vs.join(",")),
            }
        };
        let help = arg.get_help().map(|h| h.to_string().replace('|', "\\|")).unwrap_or_default();
        out.push_str(&format!("| {env} | `--{long}` | {default} | {help} |\n"));
    }
    out
}

/// Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `doc`; `None` if the markers
/// are missing.
pub fn splice(doc: &str, name: &str, content: &str) -> Option<String> {
    let start = format!("<!-- {name}:start -->\n");
    let end = format!("<!-- {name}:end -->");
    let i = doc.find(&start)? + start.len();
    let j = doc[i..].find(&end)? + i;
    Some(format!("{}{}{}", &doc[..i], content, &doc[j..]))
}
