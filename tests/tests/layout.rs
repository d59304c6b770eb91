//! The source tree keeps the shape the README's layout section draws: no file of a crate refers (through
//! `crate::`, `super::` or child-module paths) to a file that refers back to it, directly or through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`copy::place`) → file, for every `.rs` file under `src`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
                parts.pop();
            }
            found.insert(parts.join("::"), path);
        }
    }
    found
}

/// The deepest module `segments` names (the rest are items in it); the crate root if none.
fn resolve(segments: &[&str], modules: &BTreeMap<String, PathBuf>) -> String {
    (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| modules.contains_key(m)).unwrap_or_default()
}

/// The path after `prefix` at `i` in `line`: `a::b::C`.
fn path_at<'a>(line: &'a str, i: usize, prefix: &str) -> Vec<&'a str> {
    let rest = &line[i + prefix.len()..];
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
    rest[..end].split("::").filter(|s| !s.is_empty()).collect()
}

/// The modules the file of `module` refers to outside its tests: `crate::` and `super::` paths anywhere, and
/// `use child::...` of its own submodules.
fn references(module: &str, text: &str, modules: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let me: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let mut refs = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if line.starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let path = path_at(line, i, "crate::");
            if !path.is_empty() {
                refs.insert(resolve(&path, modules));
            }
        }
        for (i, _) in line.match_indices("super::") {
            let mut path: Vec<&str> = me[..me.len().saturating_sub(1)].to_vec();
            path.extend(path_at(line, i, "super::"));
            refs.insert(resolve(&path, modules));
        }
        let used = line.strip_prefix("pub use ").or_else(|| line.strip_prefix("use "));
        if let Some(first) = used.and_then(|u| u.trim_start_matches("self::").split("::").next()) {
            let child = me.iter().copied().chain([first]).collect::<Vec<_>>().join("::");
            if modules.contains_key(&child) {
                refs.insert(child);
            }
        }
    }
    refs
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut found = stack[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_of_a_crate_refers_back_to_a_file_that_refers_to_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["common", "reader", "applier"] {
        let src = root.join(krate).join("src");
        let modules = modules(&src);
        let graph: BTreeMap<String, BTreeSet<String>> = modules
            .iter()
            .map(|(module, path)| {
                let text = std::fs::read_to_string(path).expect("read source");
                let mut refs = references(module, &text, &modules);
                refs.remove(module);
                (module.clone(), refs)
            })
            .collect();
        assert!(graph.len() > 5, "{krate}: modules found under {}", src.display());
        if let Some(found) = cycle(&graph) {
            panic!("{krate}: files refer to each other in a cycle: {}", found.join(" → "));
        }
    }
}
