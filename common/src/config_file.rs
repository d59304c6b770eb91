//! Settings from outside the command line: the process environment, `.env` and the optional TOML file
//! (`--config FILE` or `REPLICA_CONFIG`), merged without ever changing the process environment.
//!
//! Precedence is flag > environment > `.env` > file > default. Keys of the file are the options' long names
//! (`primary_host` or `primary-host`); `.env` names the options' environment variables, as the original
//! service's did. Each setting that `.env` or the file provides, for an option whose environment variable is
//! not set, becomes a `--long=value` argument placed *before* the real ones, and the command is parsed with
//! `args_override_self`: a flag given on the command line wins, clap reads the environment itself, and every
//! value goes through clap's own validation. Unknown keys, keys of options that have no environment variable,
//! and values that are not strings, numbers or booleans are rejected naming the key.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The command line to parse: the program name, the settings `.env` and the config file provide, then the
/// real arguments. Parse it with `args_override_self(true)`.
pub fn layered_args(cmd: &clap::Command) -> Result<Vec<OsString>, String> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let dotenv = read_dotenv()?;
    let file = match path_from(&argv, &dotenv) {
        Some(path) => file_settings(&path, cmd)?,
        None => HashMap::new(),
    };
    let mut layered = Vec::new();
    for arg in cmd.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
        let env = env.to_string_lossy();
        if std::env::var_os(env.as_ref()).is_some() {
            continue;
        }
        if let Some(value) = dotenv.get(env.as_ref()).or_else(|| file.get(long)) {
            layered.push(OsString::from(format!("--{long}={value}")));
        }
    }
    let rest = argv.split_off(argv.len().min(1));
    argv.extend(layered);
    argv.extend(rest);
    Ok(argv)
}

/// `.env` in the working directory (or a parent, as dotenv does): a missing file is fine, a malformed one
/// is reported.
fn read_dotenv() -> Result<HashMap<String, String>, String> {
    match dotenvy::dotenv_iter() {
        Ok(items) => {
            items.map(|item| item.map_err(|e| format!("cannot read .env in the working directory: {e}"))).collect()
        }
        Err(e) if e.not_found() => Ok(HashMap::new()),
        Err(e) => Err(format!("cannot read .env in the working directory: {e}")),
    }
}

/// The TOML file's settings by option long name, checked against `cmd`.
fn file_settings(path: &Path, cmd: &clap::Command) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table =
        text.parse().map_err(|e| format!("config file {} is not valid TOML: {e}", path.display()))?;
    let mut settings = HashMap::new();
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
        if arg.get_env().is_none() {
            return Err(format!("key {key:?} in config file {} is a command-line-only option", path.display()));
        }
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
        settings.insert(long, value);
    }
    Ok(settings)
}

/// The config file named by `--config FILE` or `--config=FILE` in `argv`, else by `REPLICA_CONFIG` in the
/// environment or in `.env`.
fn path_from(argv: &[OsString], dotenv: &HashMap<String, String>) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return args.next().map(Into::into);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.into());
        }
    }
    std::env::var_os("REPLICA_CONFIG").map(Into::into).or_else(|| dotenv.get("REPLICA_CONFIG").map(Into::into))
}

/// The config file of this process (see [`layered_args`]), for reloads.
pub fn path_from_args() -> Option<PathBuf> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    path_from(&argv, &read_dotenv().unwrap_or_default())
}

/// The effective settings as a TOML file that `--config` accepts back: every option that has an environment
/// variable, with the value it has now (from a flag, the environment, `.env`, the file or its default), under
/// its long name. Secrets (options whose values `--help` hides) and options without a value are comments.
pub fn effective_toml(cmd: &clap::Command, matches: &clap::ArgMatches) -> String {
    let mut out = format!(
        "# {} --print-config: the effective settings; `--config FILE` accepts this file back (options without an \
         environment variable, such as --secondary, are command-line only).\n",
        cmd.get_name()
    );
    for arg in cmd.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
        if long == "config" {
            continue;
        }
        let key = long.replace('-', "_");
        let env = env.to_string_lossy();
        if arg.is_hide_env_values_set() {
            out.push_str(&format!("# {key}: a secret, not printed (set it with {env})\n"));
            continue;
        }
        let value = matches
            .get_raw(arg.get_id().as_str())
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","));
        match value {
            Some(v) => out.push_str(&format!("{key} = {}\n", toml::Value::String(v))),
            None => out.push_str(&format!("# {key}: not set ({env})\n")),
        }
    }
    out
}
