//! The layering rules of `src/`, checked on the source: only the store speaks SQL (sqlx), the
//! push proxy does not reach into the relay or the identity bridge, the store into no role, and
//! the identity bridge not into the relay. A rule broken here fails with the file and the line.

use std::path::{Path, PathBuf};

/// A rule: files under `under` (relative to `src/`) may not name any of `forbidden`.
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

/// The text of `line` that is code: without a `//` comment.
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Names `line` reaches: `crate::x` paths, with `use crate::{x, y}` groups written out, and
/// bare crate names.
fn names(line: &str) -> Vec<String> {
    let mut out = vec![line.to_string()];
    if let Some(group) = line.split("crate::{").nth(1) {
        for item in group.split([',', '}']) {
            let item = item.trim();
            if !item.is_empty() {
                out.push(format!("crate::{item}"));
            }
        }
    }
    out
}

/// Whether a line of code names `forbidden` as a whole path (not `crate::relayed` for
/// `crate::relay`).
fn reaches(line: &str, forbidden: &str) -> bool {
    names(code(line)).iter().any(|name| {
        name.match_indices(forbidden).any(|(at, _)| {
            let before = name[..at].chars().next_back();
            let after = name[at + forbidden.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn each_layer_imports_only_what_it_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "src/ was not found: {}", src.display());
    let mut broken = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(file).unwrap();
        for rule in RULES {
            if !relative.starts_with(rule.under)
                || rule.except_under.is_some_and(|e| relative.starts_with(e))
            {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                for forbidden in rule.forbidden {
                    if reaches(line, forbidden) {
                        broken.push(format!(
                            "src/{relative}:{}: {forbidden} ({})",
                            n + 1,
                            rule.why
                        ));
                    }
                }
            }
        }
    }
    broken.dedup();
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let hits = reaches;
    assert!(hits("use sqlx::PgPool;", "sqlx"));
    assert!(hits("    let r = sqlx::query(\"SELECT 1\");", "sqlx"));
    assert!(hits("use crate::{clock, relay::Bus};", "crate::relay"));
    assert!(hits("use crate::relay;", "crate::relay"));
    assert!(!hits("// sqlx is not used here", "sqlx"));
    assert!(!hits("use crate::relayed::X;", "crate::relay"));
    assert!(!hits("let my_sqlx_note = 1;", "sqlx"));
}
