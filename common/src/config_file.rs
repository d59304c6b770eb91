//! The optional TOML configuration file (`--config FILE` or `REPLICA_CONFIG`).
//!
//! Keys are the options' long names (`primary_host` or `primary-host`). Precedence is flag > environment >
//! file > default: a key is handed to clap as its option's environment variable, and only when that variable
//! is not set already. Unknown keys, keys of options that have no environment variable, and values that are
//! not strings, numbers or booleans are rejected naming the key; clap then validates the values.

use std::path::Path;

/// Reads `path` and sets each key's environment variable unless it is set. Returns the names set.
pub fn apply(path: &Path, cmd: &clap::Command) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table =
        text.parse().map_err(|e| format!("config file {} is not valid TOML: {e}", path.display()))?;
    let mut plan = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str())).ok_or_else(|| {
            let mut allowed: Vec<String> = cmd
                .get_arguments()
                .filter(|a| a.get_env().is_some())
                .filter_map(|a| a.get_long().map(|l| l.replace('-', "_")))
                .collect();
            allowed.sort();
            format!("unknown key {key:?} in config file {}: allowed keys are {}", path.display(), allowed.join(", "))
        })?;
        let env = arg
            .get_env()
            .ok_or_else(|| format!("key {key:?} in config file {} is a command-line-only option", path.display()))?
            .to_string_lossy()
            .into_owned();
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "key {key:?} in config file {} has a {} value: use a string, number or boolean",
                    path.display(),
                    other.type_str()
                ))
            }
        };
        plan.push((env, value));
    }
    let mut set = Vec::new();
    for (env, value) in plan {
        if std::env::var_os(&env).is_none() {
            // Single-threaded at this point: called before the runtime starts any task.
            std::env::set_var(&env, value);
            set.push(env);
        }
    }
    Ok(set)
}

/// The config file named by `--config FILE`, `--config=FILE` or `REPLICA_CONFIG`, if any.
pub fn path_from_args() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        if a == "--config" {
            return args.next().map(Into::into);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.into());
        }
    }
    std::env::var_os("REPLICA_CONFIG").map(Into::into)
}
