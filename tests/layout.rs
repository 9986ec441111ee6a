//! The house keeps its shape: fences that fail when the layout drifts, like the CRD and
//! configuration drift tests. Each failure says where new code should go instead.
//!
//! - The shared vocabulary stays on its own floor: `protocol/` depends on `k8s/` only; the
//!   client (`k8stail/`) and `auth/` never reach into the relay, the service or the operator;
//!   `lib.rs` never imports the service.
//! - No source file grows past 600 lines of code (tests apart): split it by job.
//! - README.md stays a front door (at most 10 KiB) and every relative link in it and in docs/
//!   resolves.
//! - The test kit is a crate: no `#[path]` includes, no `dead_code` allowances.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target" || n == "corpus") {
                continue;
            }
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The top-level modules of the library that `text` imports with `crate::NAME` or
/// `crate::{NAME, ...}`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        // Not `log_socket_crate::` or the like.
        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(group.split(',').map(|p| ident(p.trim())).filter(|n| !n.is_empty()));
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

#[test]
fn the_shared_vocabulary_has_a_floor_of_its_own_and_no_import_runs_back_up() {
    // (folder, modules it must not import, why)
    let fences: [(&str, &[&str], &str); 5] = [
        (
            "src/protocol",
            &[
                "auth",
                "relay",
                "operator",
                "service",
                "k8stail",
                "telemetry",
                "duration",
            ],
            "protocol/ is what both ends speak and depends on k8s/ only",
        ),
        (
            "src/k8stail",
            &["relay", "service", "operator", "auth"],
            "k8stail is a client of the protocol: move what it needs into protocol/ (or telemetry, duration)",
        ),
        (
            "src/auth",
            &["relay", "service", "operator", "k8stail"],
            "auth decides on protocol types; registration belongs to operator/sessions.rs",
        ),
        (
            "src/k8s",
            &["auth", "relay", "operator", "service", "k8stail", "protocol"],
            "k8s/ is the ground floor: resource types and client set-up",
        ),
        (
            "src/lib.rs",
            &["service", "relay", "operator", "k8stail", "auth"],
            "lib.rs holds the map, Error and Result only",
        ),
    ];
    let mut breaches = vec![];
    for (place, forbidden, why) in fences {
        let path = root().join(place);
        let files = if path.is_dir() { rust_files(&path) } else { vec![path] };
        assert!(!files.is_empty(), "{place} has no Rust files: update this fence");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for module in crate_imports(&text) {
                if forbidden.contains(&module.as_str()) {
                    breaches.push(format!(
                        "{} imports crate::{module} ({why})",
                        file.strip_prefix(root()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        breaches.is_empty(),
        "imports that run back up:\n{}",
        breaches.join("\n")
    );
}

#[test]
fn the_fence_sees_imports_in_every_form() {
    let found = crate_imports("use crate::relay::TapKey;\nuse crate::{service::X, auth};\nlet a = my_crate::k8stail;");
    assert_eq!(found, BTreeSet::from(["relay".into(), "service".into(), "auth".into()]));
}

/// Lines before a file's `#[cfg(test)]` test module.
fn code_lines(text: &str) -> usize {
    text.lines().take_while(|l| !l.starts_with("#[cfg(test)]")).count()
}

#[test]
fn no_source_file_grows_past_600_lines_of_code() {
    const MAX: usize = 600;
    let mut big = vec![];
    for dir in ["src", "benches", "testkit/src", "fuzz/src"] {
        for file in rust_files(&root().join(dir)) {
            let n = code_lines(&std::fs::read_to_string(&file).unwrap());
            if n > MAX {
                big.push(format!("{}: {n} lines", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(
        big.is_empty(),
        "files over {MAX} lines of code; split them by job (docs/development.md, Layout):\n{}",
        big.join("\n")
    );
}

#[test]
fn the_test_kit_is_a_crate_not_files_included_by_path() {
    let mut found = vec![];
    for dir in ["tests", "benches", "examples", "testkit"] {
        for file in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for needle in ["#[path", "allow(dead_code)"] {
                if text.contains(needle) && !file.ends_with("tests/layout.rs") {
                    found.push(format!("{}: {needle}", file.strip_prefix(root()).unwrap().display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "use the testkit crate (testkit/) instead:\n{}",
        found.join("\n")
    );
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose_lines(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        !fenced
    })
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose_lines(markdown) {
        if let Some(h) = line.strip_prefix('#') {
            let text = h.trim_start_matches('#');
            if text.starts_with(' ') {
                let base = anchor(text);
                let mut a = base.clone();
                let mut n = 0;
                while seen.contains(&a) {
                    n += 1;
                    a = format!("{base}-{n}");
                }
                seen.insert(a);
            }
        }
    }
    seen
}

/// The relative links `[text](target)` of a Markdown file, outside code.
fn links(markdown: &str) -> Vec<String> {
    let mut out = vec![];
    for line in prose_lines(markdown) {
        // Drop inline code so `[a](b)` inside backticks is not a link.
        let line: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for (i, _) in line.match_indices("](") {
            let rest = &line[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            if !target.contains("://") && !target.starts_with("mailto:") && !target.is_empty() {
                out.push(target.to_owned());
            }
        }
    }
    out
}

#[test]
fn the_readme_is_a_front_door_and_every_link_of_the_docs_resolves() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.len() <= 10 * 1024,
        "README.md is {} bytes (at most 10 KiB): it is the front door; put the manual in docs/ and link it from the Documentation table",
        readme.len()
    );
    let mut pages = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut broken = vec![];
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for link in links(&text) {
            let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let name = page.strip_prefix(root()).unwrap().display();
            if !target.exists() {
                broken.push(format!("{name}: {link} (no such file)"));
                continue;
            }
            if !fragment.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&target).unwrap());
                if !headings.contains(fragment) {
                    broken.push(format!("{name}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
