//! The import graph of a crate's modules, and its cycles (`tests/tests/layering.rs`).
//!
//! The rule (ARCHITECTURE.md, "Layering"): **at every level of a crate's module tree, the
//! modules that share a parent use each other without a cycle.** A module may use its own
//! descendants and its ancestors' items freely (a parent re-exports its children; a child uses
//! what its parent defines); test code — a module named `tests` or `test_*` — may use anything
//! and is left out.
//!
//! How it is read: from the crate root, every `mod NAME;` is followed to `NAME.rs` or
//! `NAME/mod.rs`; in each file, with comments and string literals blanked out, every path that
//! starts with `crate::`, `super::` or `self::` (also inside `use ...::{...}` groups) is
//! resolved to the deepest module it names. A reference from module `a::b::x` to `a::c::y` is
//! an edge `b → c` among the children of `a`. Paths through re-exports count where they are
//! written (`crate::worker::WorkerFds` is a use of `worker`), which is what a reader follows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// A module: its path from the crate root (empty for the root).
pub type ModPath = Vec<String>;

/// Why an edge exists: the first reference that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// The path as written (`crate::cli::VmConfig`).
    pub text: String,
}

/// The modules of one crate and the sibling edges between them.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every module found, with its file.
    pub modules: BTreeMap<ModPath, PathBuf>,
    /// `(parent, from, to)` → the first reference: `from` and `to` are children of `parent`.
    pub edges: BTreeMap<(ModPath, String, String), Reference>,
}

/// One cycle among the children of `parent`, with the reference behind each step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The module whose children form the cycle (`[]`: the crate root).
    pub parent: ModPath,
    /// Every module caught in cycles with these (the strongly connected component).
    pub members: Vec<String>,
    /// The steps of one shortest cycle: `from → to` and why.
    pub steps: Vec<(String, String, Reference)>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parent = match self.parent.is_empty() {
            true => "the crate root".to_string(),
            false => self.parent.join("::"),
        };
        writeln!(
            f,
            "import cycle among the modules of {parent} ({} caught in cycles: {}), for example:",
            self.members.len(),
            self.members.join(", ")
        )?;
        for (from, to, why) in &self.steps {
            writeln!(
                f,
                "  {from} -> {to}   ({}:{}: {})",
                why.file.display(),
                why.line,
                why.text
            )?;
        }
        Ok(())
    }
}

/// Reads the crate whose root file is `root` (`src/lib.rs` or `src/main.rs`).
pub fn read_crate(root: &Path) -> std::io::Result<Graph> {
    let mut graph = Graph::default();
    let mut queue = vec![(ModPath::new(), root.to_path_buf())];
    let mut sources = Vec::new();
    while let Some((path, file)) = queue.pop() {
        let text = std::fs::read_to_string(&file)?;
        let code = blank_comments_and_strings(&text);
        let dir = child_dir(&path, &file);
        for name in declared_modules(&code) {
            let mut child = path.clone();
            child.push(name.clone());
            let flat = dir.join(format!("{name}.rs"));
            let nested = dir.join(&name).join("mod.rs");
            if flat.exists() {
                queue.push((child, flat));
            } else if nested.exists() {
                queue.push((child, nested));
            }
        }
        graph.modules.insert(path.clone(), file.clone());
        sources.push((path, file, code));
    }
    for (path, file, code) in sources {
        if is_test_code(&path) {
            continue;
        }
        let code = blank_inline_test_modules(&code);
        for (line, text, target) in references(&path, &code) {
            let target = deepest_module(&graph.modules, &target);
            if let Some((parent, from, to)) = sibling_edge(&path, &target) {
                graph
                    .edges
                    .entry((parent, from, to))
                    .or_insert_with(|| Reference {
                        file: file.clone(),
                        line,
                        text,
                    });
            }
        }
    }
    Ok(graph)
}

/// Where the files of `path`'s children live: next to a root or `mod.rs` file, else in a
/// directory named after the file.
fn child_dir(path: &ModPath, file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if path.is_empty() || stem == "mod" {
        dir
    } else {
        dir.join(stem)
    }
}

/// `tests`, `test_kind`, ...: test code, which may use anything.
fn is_test_code(path: &ModPath) -> bool {
    path.iter()
        .any(|seg| seg == "tests" || seg.starts_with("test_"))
}

/// `code` with the bodies of inline `mod tests { ... }` blanked: test code may use anything.
fn blank_inline_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    let mut from = 0;
    while let Some(at) = out[from..].find("mod tests") {
        let start = from + at;
        let after = start + "mod tests".len();
        let rest = out[after..].trim_start();
        if !rest.starts_with('{') {
            from = after;
            continue;
        }
        let open = out.len() - rest.len();
        let close = open + path_len(&out[open..]);
        let blank: String = out[start..close]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(start..close, &blank);
        from = close;
    }
    out
}

/// The names of `mod NAME;` declarations (modules in their own file).
fn declared_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ';' || c == '{'))
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        if pair[0] == "mod" {
            if let Some(name) = pair[1].strip_suffix(';') {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Replaces comments, string and char literals with spaces (keeping line breaks), so that only
/// code is searched.
pub fn blank_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep_newlines = |s: &[u8]| -> String {
        s.iter()
            .map(|&c| if c == b'\n' { '\n' } else { ' ' })
            .collect()
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            i + block_comment_len(rest)
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            i + raw_string_len(rest)
        } else if rest[0] == b'"' || rest[0] == b'\'' && is_char_literal(rest) {
            i + string_len(rest)
        } else {
            // Multi-byte characters are copied whole.
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
            continue;
        };
        out.push_str(&keep_newlines(&b[i..end]));
        i = end;
    }
    out
}

fn block_comment_len(s: &[u8]) -> usize {
    let mut depth = 0;
    let mut i = 0;
    while i + 1 < s.len() {
        if s[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if s[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

fn raw_string_len(s: &[u8]) -> usize {
    let hashes = s[1..].iter().take_while(|&&c| c == b'#').count();
    let start = 1 + hashes + 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    s[start..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(s.len(), |p| start + p + close.len())
}

/// A quoted literal starting at `s[0]` (`"` or `'`), escapes honoured.
fn string_len(s: &[u8]) -> usize {
    let quote = s[0];
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// `'a'` or `'\n'` rather than a lifetime `'a`.
fn is_char_literal(s: &[u8]) -> bool {
    match s.get(1) {
        Some(b'\\') => true,
        Some(_) => {
            let ch_len = std::str::from_utf8(&s[1..])
                .ok()
                .and_then(|t| t.chars().next())
                .map_or(1, char::len_utf8);
            s.get(1 + ch_len) == Some(&b'\'')
        }
        None => false,
    }
}

/// Every `crate::`/`super::`/`self::` path in `code` of module `path`: (line, text, absolute
/// path of what it names). A `use` group may span lines; its line is where it starts.
fn references(path: &ModPath, code: &str) -> Vec<(usize, String, ModPath)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut line = 1;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        let at_word_start = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .any(|h| code[i..].starts_with(h));
        if head && at_word_start {
            let len = path_len(&code[i..]);
            let text = &code[i..i + len];
            let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            for absolute in expand(path, &flat) {
                out.push((line, flat.clone(), absolute));
            }
            line += text.matches('\n').count();
            i += len.max(1);
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The length of the path starting `s`: identifiers, `::`, and one level of `{...}` groups
/// (nested groups are included whole).
fn path_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_ident(b[i]) || b[i..].starts_with(b"::") {
            i += if is_ident(b[i]) { 1 } else { 2 };
        } else if b[i] == b'{' {
            let mut depth = 0;
            while i < b.len() {
                match b[i] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            return i;
        } else {
            break;
        }
    }
    i
}

/// The absolute paths `text` (as written in module `path`) names; a `{a, b::c}` group gives
/// one per member. Paths that leave the crate (too many `super`s) give none.
fn expand(path: &ModPath, text: &str) -> Vec<ModPath> {
    let (prefix, group) = match text.find('{') {
        Some(open) => {
            let close = text.rfind('}').filter(|&c| c > open).unwrap_or(text.len());
            (&text[..open], Some(&text[open + 1..close]))
        }
        None => (text, None),
    };
    let mut segments: Vec<&str> = prefix.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: ModPath = match segments.first() {
        Some(&"crate") => {
            segments.remove(0);
            Vec::new()
        }
        _ => path.clone(),
    };
    while let Some(&first) = segments.first() {
        match first {
            "super" => {
                if base.pop().is_none() {
                    return Vec::new();
                }
            }
            "self" => {}
            _ => break,
        }
        segments.remove(0);
    }
    base.extend(segments.iter().map(|s| s.to_string()));
    let Some(group) = group else {
        return vec![base];
    };
    let mut out = Vec::new();
    for member in split_top_level(group) {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let first = member.split("::").next().unwrap_or_default().trim();
        if first == "self" {
            out.push(base.clone());
            continue;
        }
        let mut absolute = base.clone();
        absolute.extend(
            member
                .split("::")
                .map(|s| s.split_whitespace().next().unwrap_or_default())
                .take_while(|s| !s.is_empty() && !s.starts_with('{') && *s != "*")
                .map(str::to_string),
        );
        out.push(absolute);
    }
    out
}

/// `a, b::{c, d}, e` split at the commas outside braces.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The longest prefix of `target` that is a module.
fn deepest_module(modules: &BTreeMap<ModPath, PathBuf>, target: &ModPath) -> ModPath {
    (0..=target.len())
        .rev()
        .map(|n| target[..n].to_vec())
        .find(|prefix| modules.contains_key(prefix))
        .unwrap_or_default()
}

/// The edge among siblings that a use of `to` from `from` makes: `(parent, child of parent
/// holding from, child of parent holding to)`; `None` when one is the other's ancestor.
fn sibling_edge(from: &ModPath, to: &ModPath) -> Option<(ModPath, String, String)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let a = from.get(common)?;
    let b = to.get(common)?;
    Some((from[..common].to_vec(), a.clone(), b.clone()))
}

impl Graph {
    /// Every cycle among siblings, one per strongly connected component (shortest first).
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut by_parent: BTreeMap<&ModPath, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
        for (parent, from, to) in self.edges.keys() {
            by_parent
                .entry(parent)
                .or_default()
                .entry(from)
                .or_default()
                .insert(to);
        }
        let mut out = Vec::new();
        for (parent, adjacency) in by_parent {
            for component in components(&adjacency) {
                if let Some(steps) = self.cycle_in(parent, &adjacency, &component) {
                    out.push(Cycle {
                        parent: parent.clone(),
                        members: component.iter().map(|m| m.to_string()).collect(),
                        steps,
                    });
                }
            }
        }
        out
    }

    /// A shortest cycle through the first node of `component`, with its references.
    fn cycle_in(
        &self,
        parent: &ModPath,
        adjacency: &BTreeMap<&str, BTreeSet<&str>>,
        component: &BTreeSet<&str>,
    ) -> Option<Vec<(String, String, Reference)>> {
        let start = *component.iter().next()?;
        // Breadth-first from start's successors back to start, inside the component.
        let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
        let mut frontier = vec![start];
        while !frontier.is_empty() && !previous.contains_key(start) {
            let mut next = Vec::new();
            for node in frontier {
                for &to in adjacency.get(node).into_iter().flatten() {
                    if component.contains(to) && !previous.contains_key(to) {
                        previous.insert(to, node);
                        next.push(to);
                    }
                }
            }
            frontier = next;
        }
        let mut nodes = vec![start];
        let mut at = *previous.get(start)?;
        while at != start {
            nodes.push(at);
            at = previous[at];
        }
        nodes.push(start);
        nodes.reverse();
        let steps = nodes
            .windows(2)
            .map(|w| {
                let key = (parent.clone(), w[0].to_string(), w[1].to_string());
                (w[0].to_string(), w[1].to_string(), self.edges[&key].clone())
            })
            .collect();
        Some(steps)
    }
}

/// The strongly connected components with more than one node (Tarjan).
fn components<'a>(adjacency: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<BTreeSet<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<&'a str>>,
    }
    fn visit<'a>(
        node: &'a str,
        adjacency: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        s: &mut State<'a>,
    ) {
        let n = s.index.len();
        s.index.insert(node, n);
        s.low.insert(node, n);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &next in adjacency.get(node).into_iter().flatten() {
            if !s.index.contains_key(next) {
                visit(next, adjacency, s);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.insert(top);
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    let mut nodes: BTreeSet<&str> = adjacency.keys().copied().collect();
    nodes.extend(adjacency.values().flatten().copied());
    for node in nodes {
        if !state.index.contains_key(node) {
            visit(node, adjacency, &mut state);
        }
    }
    state.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ModPath {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn comments_and_strings_are_blanked() {
        let code =
            "use crate::a; // crate::b\nlet s = \"crate::c\"; /* crate::d */ let c = '\"';\n\
                    let r = r#\"crate::e\"#; fn f<'a>(x: &'a u8) { crate::g::h(x) }";
        let blank = blank_comments_and_strings(code);
        assert_eq!(blank.lines().count(), 3);
        let refs: Vec<String> = references(&p(""), &blank)
            .into_iter()
            .map(|(_, t, _)| t)
            .collect();
        assert_eq!(refs, ["crate::a", "crate::g::h"]);
    }

    #[test]
    fn inline_test_modules_are_left_out() {
        let code = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\n";
        let blank = blank_inline_test_modules(code);
        assert_eq!(blank.lines().count(), code.lines().count());
        let refs: Vec<String> = references(&p(""), &blank)
            .into_iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(refs, ["crate::a"]);
    }

    #[test]
    fn groups_may_span_lines() {
        let code = "use crate::a::{\n    b::C,\n    d,\n};\nuse super::e;\n";
        let refs = references(&p("x::y"), code);
        let lines: Vec<usize> = refs.iter().map(|r| r.0).collect();
        let targets: Vec<ModPath> = refs.into_iter().map(|r| r.2).collect();
        assert_eq!(targets, [p("a::b::C"), p("a::d"), p("x::e")]);
        assert_eq!(lines, [1, 1, 5]);
    }

    #[test]
    fn paths_and_groups_resolve_from_the_module() {
        let here = p("worker::serve");
        assert_eq!(
            expand(&here, "super::queues::build"),
            [p("worker::queues::build")]
        );
        assert_eq!(expand(&here, "self::x"), [p("worker::serve::x")]);
        assert_eq!(
            expand(&here, "crate::{cli::Args, worker::{a, b}, self}"),
            [p("cli::Args"), p("worker"), p("")]
        );
        assert_eq!(expand(&p("a"), "super::super::x"), Vec::<ModPath>::new());
        assert_eq!(
            path_len("crate::a::{b, c::{d}}::x;"),
            "crate::a::{b, c::{d}}".len()
        );
    }

    #[test]
    fn sibling_edges_ignore_ancestors_and_find_the_common_parent() {
        assert_eq!(
            sibling_edge(&p("a::b::x"), &p("a::c::y")),
            Some((p("a"), "b".into(), "c".into()))
        );
        assert_eq!(sibling_edge(&p("a::b"), &p("a")), None);
        assert_eq!(sibling_edge(&p("a"), &p("a::b")), None);
        assert_eq!(
            sibling_edge(&p("x"), &p("y::z")),
            Some((p(""), "x".into(), "y".into()))
        );
    }

    #[test]
    fn cycles_are_found_with_their_references() {
        let mut graph = Graph::default();
        let why = |line| Reference {
            file: "f.rs".into(),
            line,
            text: "crate::x".into(),
        };
        for (from, to, line) in [("a", "b", 1), ("b", "c", 2), ("c", "a", 3), ("c", "d", 4)] {
            graph
                .edges
                .insert((p(""), from.into(), to.into()), why(line));
        }
        let cycles = graph.cycles();
        assert_eq!(cycles.len(), 1);
        let steps: Vec<(&str, &str)> = cycles[0]
            .steps
            .iter()
            .map(|(a, b, _)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(steps, [("a", "b"), ("b", "c"), ("c", "a")]);
        assert!(cycles[0]
            .to_string()
            .contains("c -> a   (f.rs:3: crate::x)"));
        graph.edges.remove(&(p(""), "c".into(), "a".into()));
        assert!(graph.cycles().is_empty());
    }
}
