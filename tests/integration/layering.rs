//! The layering rules of `src/`, checked on the source: only the store speaks SQL (sqlx), the
//! push proxy does not reach into the relay or the identity bridge, the store into no role, and
//! the identity bridge not into the relay. A rule broken here fails with the file and the line.
//!
//! Paths are read as the compiler would see them: a `use` statement over several lines with its
//! `{}` groups written out, `super::` and `self::` resolved from the file's module, and every
//! `crate::`/`super::` path in code, not only in `use`.

use std::path::{Path, PathBuf};

/// A rule: files under `under` (relative to `src/`, except those under `except_under`) may not
/// name a module in `forbidden`.
struct Rule {
    under: &'static str,
    except_under: Option<&'static str>,
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        under: "",
        except_under: Some("store/"),
        forbidden: &["sqlx"],
        why: "only src/store/ speaks to the database",
    },
    Rule {
        under: "push/",
        except_under: None,
        forbidden: &["crate::relay", "crate::identity", "crate::workspace"],
        why: "the push proxy stands alone",
    },
    Rule {
        under: "store/",
        except_under: None,
        forbidden: &[
            "crate::relay",
            "crate::identity",
            "crate::push",
            "crate::workspace",
        ],
        why: "the store serves the roles and imports none",
    },
    Rule {
        under: "identity/",
        except_under: None,
        forbidden: &["crate::relay", "crate::workspace"],
        why: "the identity bridge does not depend on the relay",
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file: its path under `src/` (`relay/bus.rs`) and its text.
struct Source {
    relative: String,
    text: String,
}

impl Source {
    /// The text without its unit tests: what tests import is not the module's design.
    fn without_tests(&self) -> &str {
        self.text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or(&self.text)
    }
}

/// Every `.rs` file under `src/<under>` (`""`: all of `src/`).
fn sources(under: &str) -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join(under), &mut files);
    assert!(
        !files.is_empty(),
        "no sources under {}",
        src.join(under).display()
    );
    files
        .iter()
        .map(|file| Source {
            relative: file
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .to_string(),
            text: std::fs::read_to_string(file).unwrap(),
        })
        .collect()
}

/// The module a file under `src/` is: `push/apns.rs` is `push::apns`, `push/mod.rs` is `push`.
fn module_of(relative: &str) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// A line without its comment: `//` at the start or after white space (not the `//` of a
/// URL in a string).
fn code(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(at) = line[from..].find("//") {
        let at = from + at;
        if at == 0 || bytes[at - 1].is_ascii_whitespace() {
            return &line[..at];
        }
        from = at + 2;
    }
    line
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `a::{b, c::{d, e as f}, self}` written out: `a::b`, `a::c::d`, `a::c::e`, `a`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        return vec![path.to_string()];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_string()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// `path` as seen from `module`: `super::` and `self::` made `crate::` paths; other paths
/// (another crate's, `crate::` ones) as they are.
fn resolve(path: &str, module: &[String]) -> String {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    let mut relative = false;
    loop {
        if let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
            relative = true;
        } else if let Some(r) = rest.strip_prefix("self::") {
            rest = r;
            relative = true;
        } else {
            break;
        }
    }
    if !relative {
        return path.to_string();
    }
    let mut parts = vec!["crate".to_string()];
    parts.extend(base);
    parts.push(rest.to_string());
    parts.join("::")
}

/// Every path a file's code names, with the line it starts on: each `use` statement written
/// out, and each `crate::`, `super::` or `self::` path anywhere else, resolved from `module`;
/// and every use of an identifier (for crate names such as `sqlx`).
fn paths(text: &str, module: &[String]) -> Vec<(usize, String)> {
    // Modules this file declares (`mod x;`): a path starting with one is relative to here.
    let children: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = code(l).trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub(super) "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect();
    let resolve = |path: &str| {
        let first = path.split("::").next().unwrap_or("");
        if children.iter().any(|c| c == first) {
            resolve(&format!("self::{path}"), module)
        } else {
            resolve(path, module)
        }
    };
    let mut out = Vec::new();
    let mut statement: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let line = code(line);
        // A `use` statement, gathered up to its `;`.
        let trimmed = line.trim_start();
        let starts_use = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p));
        match (&mut statement, starts_use) {
            (None, Some(rest)) => statement = Some((n + 1, rest.to_string())),
            (Some((_, text)), _) => {
                text.push(' ');
                text.push_str(trimmed);
            }
            (None, None) => {}
        }
        if let Some((start, text)) = &statement
            && let Some(end) = text.find(';')
        {
            for path in expand(&text[..end]) {
                out.push((*start, resolve(&path)));
            }
            statement = None;
        }
        // Paths and identifiers in the line's code (a `mod x;` declaration names nothing).
        if children
            .iter()
            .any(|c| trimmed.trim_end().ends_with(&format!("mod {c};")))
        {
            continue;
        }
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (at, c) = chars[i];
            if !is_ident(c) || (i > 0 && is_ident(chars[i - 1].1)) {
                i += 1;
                continue;
            }
            let mut end = line.len();
            let mut j = i;
            // An identifier followed by `::identifier` as long as there is one.
            while j < chars.len() {
                let (pos, ch) = chars[j];
                if is_ident(ch) {
                    j += 1;
                } else if line[pos..].starts_with("::")
                    && line[pos + 2..].starts_with(|c: char| is_ident(c))
                {
                    j += 2;
                } else {
                    end = pos;
                    break;
                }
            }
            out.push((n + 1, resolve(&line[at..end])));
            i = j.max(i + 1);
        }
    }
    out
}

/// Whether `path` is `module` or inside it.
fn inside(path: &str, module: &str) -> bool {
    path == module || path.starts_with(&format!("{module}::"))
}

#[test]
fn each_layer_imports_only_what_it_may() {
    let sources = sources("");
    assert!(sources.len() > 50, "src/ was not found");
    let mut broken = Vec::new();
    for Source { relative, text } in &sources {
        let named = paths(text, &module_of(relative));
        for rule in RULES {
            if !relative.starts_with(rule.under)
                || rule.except_under.is_some_and(|e| relative.starts_with(e))
            {
                continue;
            }
            for (line, path) in &named {
                for forbidden in rule.forbidden {
                    if inside(path, forbidden) {
                        broken.push(format!("src/{relative}:{line}: {path} ({})", rule.why));
                    }
                }
            }
        }
    }
    broken.dedup();
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_check_reads_paths_as_the_compiler_does() {
    let module = module_of("push/apns.rs");
    assert_eq!(module, ["push", "apns"]);
    assert_eq!(module_of("store/mod.rs"), ["store"]);
    let named =
        |text: &str| -> Vec<String> { paths(text, &module).into_iter().map(|(_, p)| p).collect() };
    let reaches = |text: &str, forbidden: &str| named(text).iter().any(|p| inside(p, forbidden));
    assert!(reaches("use sqlx::PgPool;", "sqlx"));
    assert!(reaches("    let r = sqlx::query(\"SELECT 1\");", "sqlx"));
    assert!(reaches("use crate::{clock, relay::Bus};", "crate::relay"));
    assert!(reaches(
        "use crate::{\n    clock::Clock,\n    relay::{Bus, Hub},\n};",
        "crate::relay"
    ));
    assert!(reaches("use crate::relay;", "crate::relay"));
    assert!(reaches("use super::super::relay::Bus;", "crate::relay"));
    assert!(reaches(
        "let x = super::super::identity::mint();",
        "crate::identity"
    ));
    assert!(reaches(
        "pub(crate) use crate::identity as id;",
        "crate::identity"
    ));
    assert!(!reaches("use super::request::Provider;", "crate::relay"));
    assert!(
        named("use super::request::Provider;").contains(&"crate::push::request::Provider".into())
    );
    assert!(!reaches("// sqlx is not used here", "sqlx"));
    assert!(!reaches(
        "let url = \"https://x/sqlx-docs\"; // sqlx",
        "crate::relay"
    ));
    assert!(!reaches("use crate::relayed::X;", "crate::relay"));
    assert!(!reaches("let my_sqlx_note = 1;", "sqlx"));
}

/// The relay's modules and which of them each one names (a file's own module aside).
fn relay_imports() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let sources = sources("relay");
    // The relay's modules by file name (`bus` for relay/bus.rs, `sso` for relay/sso/mod.rs);
    // a module's own submodules (relay/sso/oidc.rs) count as part of it.
    let stems: Vec<&str> = sources
        .iter()
        .filter_map(|s| {
            let rest = s.relative.strip_prefix("relay/")?;
            rest.strip_suffix("/mod.rs")
                .or_else(|| rest.strip_suffix(".rs").filter(|r| !r.contains('/')))
        })
        .collect();
    let mut graph = std::collections::BTreeMap::new();
    for source in &sources {
        let mut module = module_of(&source.relative);
        module.truncate(2);
        let module = module.join("::");
        let named: std::collections::BTreeSet<String> =
            paths(source.without_tests(), &module_of(&source.relative))
                .into_iter()
                .filter_map(|(_, path)| {
                    let rest = path.strip_prefix("crate::")?;
                    let mut parts = rest.split("::");
                    let (first, second) = (parts.next()?, parts.next());
                    if first != "relay" {
                        return None;
                    }
                    // `crate::relay::x::...` is module relay::x when x is one of the relay's files.
                    let target = match second {
                        Some(x) if stems.contains(&x) => {
                            format!("relay::{x}")
                        }
                        _ => "relay".to_string(),
                    };
                    (target != module).then_some(target)
                })
                .collect();
        graph
            .entry(module)
            .or_insert_with(std::collections::BTreeSet::new)
            .extend(named);
    }
    graph
}

#[test]
fn no_relay_module_imports_one_that_imports_it_back() {
    let graph = relay_imports();
    assert!(graph.len() > 10, "{graph:?}");
    // Every cycle, found by walking from each module.
    let mut cycles = std::collections::BTreeSet::new();
    fn walk(
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        cycles: &mut std::collections::BTreeSet<String>,
    ) {
        let here = path.last().unwrap().clone();
        for next in graph.get(&here).into_iter().flatten() {
            if let Some(at) = path.iter().position(|m| m == next) {
                let mut cycle = path[at..].to_vec();
                // One spelling per cycle: starting at its smallest module.
                let min = cycle.iter().enumerate().min_by_key(|(_, m)| *m).unwrap().0;
                cycle.rotate_left(min);
                cycles.insert(cycle.join(" -> "));
            } else if path.len() < 12 {
                path.push(next.clone());
                walk(graph, path, cycles);
                path.pop();
            }
        }
    }
    for start in graph.keys() {
        walk(&graph, &mut vec![start.clone()], &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "import cycles in src/relay:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// Only the mint opens a private signing key: no other file reads a signing key's sealed
/// private part (`private_sealed`) and opens sealed data in the same place. (The store holds
/// the column; the key ring makes and seals keys but never opens one.)
#[test]
fn only_the_mint_opens_a_private_signing_key() {
    let mut openers = Vec::new();
    for source in sources("") {
        let code: Vec<&str> = source.without_tests().lines().map(code).collect();
        // A call of `open(` within three lines of `private_sealed`.
        let opens = code.iter().enumerate().any(|(n, line)| {
            line.contains("private_sealed")
                && code[n.saturating_sub(3)..(n + 4).min(code.len())]
                    .iter()
                    .any(|l| l.contains(".open("))
        });
        if opens && !source.relative.starts_with("store/") {
            openers.push(source.relative);
        }
    }
    assert_eq!(
        openers,
        ["identity/mint.rs"],
        "files opening a private signing key"
    );
}
