//! Modules depend one way: in each crate of the workspace, the graph of which top-level
//! module names which (`crate::x` anywhere in code outside test modules, `tests.rs` files,
//! `tests/` directories and comments,
//! `use crate::{x, y}` included) has no cycle. A new import that closes one fails here with the cycle named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the crate at `src` and the modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // A `tests/` directory is a test module of its own, as a `tests.rs` is.
                if path.file_name().is_some_and(|n| n != "tests") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                // A `tests.rs` is a test module of its own: tests may import anything.
                && path.file_name().is_some_and(|n| n != "tests.rs")
            {
                files.push(path);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        // Comments (doc links included) are no dependency.
        let code: String = outside_tests(&text)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let names = graph.entry(module.clone()).or_default();
        names.extend(named_modules(&code));
        names.remove(&module);
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|n| known.contains(n));
    }
    graph
}

/// The text before a file's `#[cfg(test)] mod tests`, which tests may import anything.
fn outside_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests") {
            return &text[..start];
        }
        at = start + 1;
    }
    text
}

/// Module names after `crate::`, and inside `use crate::{...}` groups.
fn named_modules(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let after = &text[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find("};").unwrap_or(group.len())];
            // `use crate::{a::B, c}`: the first segment of each path at depth 0.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && !c.is_whitespace() => {
                        names.insert(ident(&inner[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(ident(after));
        }
    }
    names.remove("");
    names
}

/// A cycle in `graph`, if it has one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in &graph[node] {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_crates_modules_depend_one_way() {
    for krate in ["core", "engines", "servers", "sim"] {
        let src = workspace().join(krate).join("src");
        let graph = graph(&src);
        assert!(graph.len() > 3, "{krate}: modules found: {graph:?}");
        if let Some(found) = cycle(&graph) {
            let edges: Vec<String> = graph
                .iter()
                .map(|(m, names)| format!("  {m} -> {names:?}"))
                .collect();
            panic!(
                "{krate}/src has an import cycle: {}\n{}",
                found.join(" -> "),
                edges.join("\n")
            );
        }
    }
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    let text = "use crate::a::X;\nuse crate::{b::{C, D}, c};\nfn f() { crate::d::g(); }\n#[cfg(test)]\nmod tests { use crate::e; }";
    let names: Vec<String> = named_modules(outside_tests(text)).into_iter().collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "d")] {
        graph.entry(from.into()).or_default().insert(to.into());
        graph.entry(to.into()).or_default();
    }
    assert_eq!(cycle(&graph), None);
    graph.get_mut("c").unwrap().insert("a".into());
    assert_eq!(cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}
