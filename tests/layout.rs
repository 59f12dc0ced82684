//! The crate's shape, checked on its own sources: no module imports one that
//! imports it back (top-level modules, by their `crate::` paths), and no
//! source file grows past ~450 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The top-level module a file belongs to (`src/proxy/admit.rs` -> `proxy`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let module = module_of(&src, f);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for part in text.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                uses.entry(module.clone()).or_default().insert(name);
            }
        }
    }
    // Depth-first search for a path that comes back to where it started.
    fn back_to(
        start: &str,
        at: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in uses.get(at).into_iter().flatten() {
            path.push(next.clone());
            if next == start
                || (seen.insert(next.clone()) && back_to(start, next, uses, path, seen))
            {
                return true;
            }
            path.pop();
        }
        false
    }
    for module in uses.keys() {
        let mut path = vec![module.clone()];
        let found = back_to(module, module, &uses, &mut path, &mut BTreeSet::new());
        assert!(!found, "import cycle: {}", path.join(" -> "));
    }
}

#[test]
fn no_source_file_grows_past_450_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for f in files {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(
            n <= 450,
            "{} has {n} lines: split it by concern",
            f.display()
        );
    }
}

/// The figures the README gives for the code's constants are the code's.
#[test]
fn the_readme_states_the_codes_constants() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let settle = dastra_proxy::store::SETTLE.as_millis();
    let heartbeat = dastra_proxy::store::HEARTBEAT.as_millis();
    for says in [
        format!("for {settle} ms (`SETTLE`)"),
        format!("{settle} ms settle once"),
        format!("every {heartbeat} ms while it has any"),
        format!("A replica asks Redis about a quota key every {heartbeat} ms"),
    ] {
        assert!(readme.contains(&says), "README does not say {says:?}");
    }
    assert!(
        !readme.contains("1 s (`SETTLE`)") && !readme.contains("1 s settle"),
        "a stale settle figure"
    );
}

/// Each of a call's facts (`src/proxy/facts.rs`) is written by the one stage
/// its declaration names ("written in `file.rs`"), and by no other file.
#[test]
fn each_call_fact_has_the_one_writer_it_declares() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let decl = std::fs::read_to_string(src.join("proxy/facts.rs")).unwrap();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter(|f| !f.ends_with("proxy/facts.rs"))
        .map(|f| {
            let t = std::fs::read_to_string(&f).unwrap();
            (f, t)
        })
        .collect();
    // The fields of `Facts`, each with the doc comment above it.
    let body = &decl[decl.find("pub(crate) struct Facts {").unwrap()..];
    let body = &body[..body.find("\n}").unwrap()];
    let (mut doc, mut checked) = (String::new(), 0);
    for line in body.lines().skip(1) {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            doc.push_str(d);
            doc.push(' ');
            continue;
        }
        let field = t
            .split(':')
            .next()
            .unwrap()
            .trim_start_matches("pub(crate) ");
        let setter = format!(".set_{field}(");
        let doc_text = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        let declared = doc_text
            .split("written in `")
            .nth(1)
            .and_then(|r| r.split('`').next())
            .map(str::to_owned);
        doc.clear();
        if !decl.contains(&format!("fn set_{field}(")) {
            // Set at creation (the request id), not by a stage.
            continue;
        }
        let declared = declared
            .unwrap_or_else(|| panic!("facts.rs: `{field}` does not say where it is written"));
        let writers: Vec<&PathBuf> = texts
            .iter()
            .filter(|(_, t)| t.contains(&setter))
            .map(|(f, _)| f)
            .collect();
        assert!(
            writers.len() == 1 && writers[0].ends_with(format!("proxy/{declared}")),
            "`{field}` declares its writer in proxy/{declared}, but `{setter}` is called in {writers:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 7,
        "only {checked} facts found: did facts.rs change shape?"
    );
}
