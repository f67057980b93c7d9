//! No import cycles between the library's top-level modules: read from the sources themselves.
//!
//! Each file's `crate::` paths (in `use` lines and inline, grouped `crate::{a, b::c}` included;
//! `super::` in a flat top-level file names the crate root) are edges from its top-level module
//! to the one the path names. Test code (`#[cfg(test)] mod …` to the end of the file, files
//! named `tests.rs`) is left out: a unit test may use the in-memory adapters of the module it
//! tests. The test fails naming every cycle with one file that makes each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The number of `#`s of the raw string (`r"…"`, `r#"…"#`, `br#"…"#`) whose `r` is at `i`.
fn raw_string_at(chars: &[char], i: usize) -> Option<usize> {
    let in_a_word = chars[..i]
        .last()
        .is_some_and(|c| (c.is_alphanumeric() || *c == '_') && *c != 'b');
    let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
    (!in_a_word && chars.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The file without its comments, string and character literals and test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let raw = if chars[i] == 'r' {
            raw_string_at(&chars, i)
        } else {
            None
        };
        match (chars[i], raw) {
            ('/', _) if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            ('/', _) if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
                continue;
            }
            // A raw string (r"…", r#"…"#, br#"…"#): to its quote and as many #s.
            (_, Some(hashes)) => {
                i += hashes + 2;
                while i < chars.len()
                    && !(chars[i] == '"'
                        && chars[i + 1..].iter().take_while(|c| **c == '#').count() >= hashes)
                {
                    i += 1;
                }
                i += hashes;
                out.push_str("\"\"");
            }
            ('"', _) => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
            }
            // A character literal ('"', '\'', '\u{7f}'), not a lifetime ('a).
            ('\'', _) if chars.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
            }
            ('\'', _) if chars.get(i + 2) == Some(&'\'') => i += 2,
            (c, _) => out.push(c),
        }
        i += 1;
    }
    out
}

/// The top-level modules the code names through `prefix` (`crate::`): `crate::a::b` names `a`,
/// `crate::{a, b::{c, d}}` names `a` and `b`.
fn named_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices(prefix) {
        // Not the tail of a longer path (`foo::crate::` does not occur; `xcrate::` might).
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = code[i + prefix.len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The group's items at depth one: each starts after `{` or a `,`.
            let mut depth = 1;
            let mut at_item = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_item = true,
                    c if at_item && depth == 1 && !c.is_whitespace() => {
                        at_item = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            names.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn the_top_level_modules_import_one_another_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    // The top-level module a file is part of: `ports` for `ports/mail.rs`, `state` for `state.rs`.
    let module_of = |file: &Path| -> String {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        first.trim_end_matches(".rs").to_owned()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != "lib" && m != "module_graph")
        .collect();
    // module → module it names → a file that names it.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = module_of(file);
        if !modules.contains(&module) || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut named = named_after(&code, "crate::");
        if rel.components().count() == 1 {
            named.extend(named_after(&code, "super::"));
        }
        for to in named {
            if to != module && modules.contains(&to) {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    assert!(
        edges.get("stages").is_some_and(|e| e.contains_key("ports")),
        "the reading finds the edges there are: {edges:?}"
    );
    // Every cycle, found by a walk from each module back to itself through modules that sort
    // after it (so each cycle is reported once, from its first module).
    fn walk<'a>(
        start: &'a str,
        steps: &mut Vec<(&'a str, &'a str, &'a str)>,
        edges: &'a BTreeMap<String, BTreeMap<String, String>>,
        cycles: &mut Vec<String>,
    ) {
        let at = steps.last().map_or(start, |(_, to, _)| *to);
        for (to, file) in edges.get(at).into_iter().flatten() {
            let step = (at, to.as_str(), file.as_str());
            if to == start {
                let shown: Vec<String> = steps
                    .iter()
                    .chain([&step])
                    .map(|(from, to, file)| format!("{from} → {to} ({file})"))
                    .collect();
                cycles.push(shown.join(", "));
            } else if to.as_str() > start && !steps.iter().any(|(from, _, _)| from == to) {
                steps.push(step);
                walk(start, steps, edges, cycles);
                steps.pop();
            }
        }
    }
    let mut cycles = Vec::new();
    for start in edges.keys() {
        walk(start, &mut Vec::new(), &edges, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "{} import cycles between the top-level modules:\n{}",
        cycles.len(),
        cycles.join("\n")
    );
}

#[test]
fn paths_are_read_singly_and_in_groups_and_comments_and_strings_are_not() {
    let code = code_of(
        "use crate::a::X;\nuse crate::{b::{C, D}, e, self};\n// crate::f\nlet s = \"crate::g \\\" crate::k\";\nlet q = '\"'; let t = crate::h::i();\n/* crate::l */ fn f<'a>(x: &'a str) -> crate::m::N { '\\'' }\nlet r = r#\"crate::n \" crate::o\"#; let u = crate::p::Q;\n#[cfg(test)]\nmod tests { use crate::j; }",
    );
    let names: Vec<String> = named_after(&code, "crate::").into_iter().collect();
    assert_eq!(names, ["a", "b", "e", "h", "m", "p"]);
}
