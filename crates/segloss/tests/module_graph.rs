//! The workspace's modules import one another without cycles: in every crate under `crates/`,
//! no module imports one that imports it back, directly or through others.
//!
//! A module is a source file (`a.rs` or `a/mod.rs`; `lib.rs` and `main.rs` are the crate root).
//! Module `A` imports module `B` when `A`'s code (comments and `#[cfg(test)] mod tests` left out)
//! names a path into `B`: `crate::b::...`, `super::...`, `self::...`, or a child module by name,
//! in a `use` declaration or inline. A path resolves to the longest module prefix it names, so
//! `crate::kernel::Kernel` is an import of `kernel` itself (its `mod.rs`, which re-exports it),
//! not of the submodule that defines it: a module imports from the defining module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (segments below the crate root) of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_string()),
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments, string literals' contents and its inline test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // A string literal (raw strings in this workspace hold no module paths or quotes).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            // Non-ASCII characters (outside comments and strings: none that matter) become
            // spaces, so that byte and character positions agree.
            out.push(if b[i].is_ascii() { b[i] as char } else { ' ' });
            i += 1;
        }
    }
    out
}

/// The inline modules (`mod name { ... }`) of `code`: name and byte range of the body.
fn inline_modules(code: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = find_word(&code[from..], "mod").map(|j| from + j) {
        from = i + 3;
        let rest = &code[i + 3..];
        let name_len = rest
            .trim_start()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(0);
        let name_start = i + 3 + (rest.len() - rest.trim_start().len());
        let name = &code[name_start..name_start + name_len];
        let after = code[name_start + name_len..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        let mut close = code.len();
        for (k, &c) in b.iter().enumerate().skip(open) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        found.push((name.to_string(), open..close));
    }
    found
}

/// Paths named by the `use` trees and inline paths of `code`, as written (segments), each with
/// its byte position.
fn paths_in(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut paths = Vec::new();
    // `use` declarations, braces expanded.
    let mut at = 0;
    while let Some(i) = find_word(&code[at..], "use").map(|j| at + j) {
        let after = &code[i + 3..];
        let end = after.find(';').unwrap_or(after.len());
        let mut tree = Vec::new();
        expand_tree(after[..end].trim(), &mut Vec::new(), &mut tree);
        paths.extend(tree.into_iter().map(|p| (i, p)));
        at = i + 3 + end;
    }
    // Inline paths: identifier sequences joined by `::`.
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = (chars[i].is_alphabetic() || chars[i] == '_')
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        let mut segments = Vec::new();
        loop {
            let s = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            segments.push(chars[s..i].iter().collect::<String>());
            let sep = i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':';
            let next = i + 2 < chars.len() && (chars[i + 2].is_alphabetic() || chars[i + 2] == '_');
            if sep && next {
                i += 2;
            } else {
                if sep {
                    // `a::{...}` or `a::*`: the head of a `use` tree, read above.
                    segments.clear();
                }
                break;
            }
        }
        if segments.len() > 1 {
            paths.push((start, segments));
        }
    }
    paths
}

fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(j) = s[from..].find(word) {
        let i = from + j;
        let before = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let after = b
            .get(i + word.len())
            .is_none_or(|c| c.is_ascii_whitespace());
        if before && after {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

/// Expands a `use` tree (`a::b::{c, d::{e, f}}`) under `prefix` into full paths.
fn expand_tree(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let n = prefix.len();
        prefix.extend(
            head.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        let inner = &tree[open + 1..tree.rfind('}').expect("a closing brace")];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_tree(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_tree(&inner[start..], prefix, out);
        prefix.truncate(n);
    } else {
        let path = tree.split(" as ").next().expect("a path");
        let mut full = prefix.clone();
        full.extend(
            path.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        out.push(full);
    }
}

/// The module a path written in `from` leads to, if it names one of the crate's modules.
fn resolve(
    from: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut abs: Vec<String> = match path[0].as_str() {
        "crate" => Vec::new(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        "self" => from.to_vec(),
        _ => {
            // A child module named directly.
            let mut child = from.to_vec();
            child.push(path[0].clone());
            if !modules.contains(&child) {
                return None;
            }
            from.to_vec()
        }
    };
    let skip = usize::from(matches!(path[0].as_str(), "crate" | "super" | "self"));
    let mut rest = &path[skip..];
    while rest.first().is_some_and(|s| s == "super") {
        abs.pop()?;
        rest = &rest[1..];
    }
    let mut best = abs.clone();
    // Within an inline module, the file's module is the longest prefix that is a file.
    while !modules.contains(&best) {
        best.pop()?;
    }
    for seg in rest {
        abs.push(seg.clone());
        if modules.contains(&abs) {
            best = abs.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// The cycles (strongly connected components of more than one module) of a crate's import graph,
/// each with its imports inside the component (`a -> b`).
fn cycles(src: &Path) -> Vec<(Vec<String>, Vec<String>)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // Binaries under src/bin are crates of their own.
    files.retain(|f| !f.strip_prefix(src).unwrap().starts_with("bin"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let from = module_of(src, f);
        let text = std::fs::read_to_string(f).expect("readable source");
        let targets = edges.entry(from.clone()).or_default();
        let code = code_of(&text);
        let inline = inline_modules(&code);
        for (at, path) in paths_in(&code) {
            // Inside `mod name { ... }`, `super` and child names are relative to that module;
            // the import is the file's.
            let mut within = from.clone();
            within.extend(
                inline
                    .iter()
                    .filter(|(_, r)| r.contains(&at))
                    .map(|(n, _)| n.clone()),
            );
            if let Some(to) = resolve(&within, &path, &modules)
                && to != from
            {
                targets.insert(to);
            }
        }
    }
    // Tarjan's strongly connected components.
    let names: Vec<Vec<String>> = modules.iter().cloned().collect();
    let index_of: BTreeMap<&Vec<String>, usize> =
        names.iter().enumerate().map(|(i, m)| (m, i)).collect();
    let adj: Vec<Vec<usize>> = names
        .iter()
        .map(|m| {
            edges
                .get(m)
                .map(|t| t.iter().map(|x| index_of[x]).collect())
                .unwrap_or_default()
        })
        .collect();
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().expect("on the stack");
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                s.sccs.push(scc);
            }
        }
    }
    let n = names.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    let name = |m: &Vec<String>| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    s.sccs
        .iter()
        .map(|scc| {
            let mut c: Vec<String> = scc.iter().map(|&i| name(&names[i])).collect();
            c.sort();
            let mut inside: Vec<String> = scc
                .iter()
                .flat_map(|&v| {
                    adj[v]
                        .iter()
                        .filter(|w| scc.contains(w))
                        .map(|&w| format!("{} -> {}", name(&names[v]), name(&names[w])))
                        .collect::<Vec<_>>()
                })
                .collect();
            inside.sort();
            (c, inside)
        })
        .collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf();
    let mut found = Vec::new();
    let mut checked = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .expect("the crates folder")
        .map(|e| e.expect("an entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for src in dirs {
        checked += 1;
        for (cycle, imports) in cycles(&src) {
            found.push(format!(
                "{}: {}\n    imports: {}",
                src.display(),
                cycle.join(", "),
                imports.join("; ")
            ));
        }
    }
    assert!(
        checked >= 3,
        "expected the workspace's crates under {crates:?}"
    );
    assert!(
        found.is_empty(),
        "modules that import each other (directly or through others):\n{}",
        found.join("\n")
    );
}

/// The checker itself finds a cycle where there is one, through `use` trees and inline paths.
#[test]
fn the_checker_sees_cycles() {
    let dir = std::env::temp_dir().join(format!("segloss-module-graph-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("k")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(src.join(p), s).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod k;\nmod leaf;\n");
    write("a.rs", "use crate::{leaf::X, b::{self, Y}};\n");
    write("b.rs", "fn f() { crate::k::run(); }\n");
    write(
        "leaf.rs",
        "// crate::a::nothing (a comment)\npub struct X;\n",
    );
    write("k/mod.rs", "mod inner;\npub use inner::run;\n");
    write("k/inner.rs", "pub fn run() { super::super::a::g(); }\n");
    let found: Vec<Vec<String>> = cycles(&src).into_iter().map(|(c, _)| c).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found,
        vec![vec![
            "a".to_string(),
            "b".to_string(),
            "k".to_string(),
            "k::inner".to_string()
        ]]
    );
}
