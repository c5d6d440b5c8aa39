//! The house keeps its layers: no module of `src/` imports one above it,
//! no room grows too big. Reads the sources (not the compiled crate), so it
//! runs in `cargo test` and CI without extra tools. The layers and the
//! reasons for them are in docs/layout.md; a new top-level module needs a
//! row in [`LAYERS`] and there.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, bottom first. A module may import any
/// module of a lower layer; modules on the same layer don't import each
/// other.
const LAYERS: &[&[&str]] = &[
    // Vocabulary: channel names, cursors, epochs, the transport label, the
    // envelope and its encodings, error answers.
    &["protocol"],
    // Configuration: parse and check syntax, nothing that touches the world.
    &["config"],
    &["metrics"],
    // Connection plumbing: metering, buckets, per-address limits, TLS.
    &["net", "migration"],
    &["http"],
    // Services the transports use.
    &["auth", "bus", "proxy"],
    // The state every handler reaches.
    &["gateway"],
    &["transport", "publish"],
    &["bridge"],
    // The listeners and routers, then the crate root and the binary.
    &["server"],
    &["lib", "main"],
];

/// Lines of code a file may hold, not counting its unit tests.
const MAX_FILE_LINES: usize = 500;
/// Lines a function may span, signature to closing brace.
const MAX_FN_LINES: usize = 80;

/// What `src/lib.rs` re-exports at the crate root, and from where: a path
/// through the root is an import of the module the item lives in.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Config", "config"),
    ("Gateway", "gateway"),
    ("App", "server"),
    ("Listeners", "server"),
    ("run", "server"),
    ("error", "protocol"),
];

fn reexported_from(name: &str) -> Option<&'static str> {
    ROOT_REEXPORTS
        .iter()
        .find(|(item, _)| *item == name)
        .map(|(_, module)| *module)
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out.sort();
    out
}

/// The top-level module a source file belongs to (`src/bus/hub.rs` → `bus`).
fn top_module(path: &Path) -> String {
    let rel = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .expect("under src/");
    let first = rel.components().next().expect("a file").as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// Files that are unit tests only (declared `#[cfg(test)] mod …;`).
fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// The code of a file without its unit tests (a trailing
/// `#[cfg(test)] mod tests`) and without comments.
fn code_of(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal ("http://…") is rare in these
            // sources and only hides the rest of that line.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named by `crate::` paths in `code`, including the
/// groups of `use crate::{a::…, b};`.
fn imported_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `pollbridge_crate::…` and the like
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                out.push(first_segment(item));
            }
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The index of the `}` closing a group whose `{` was just consumed.
fn matching_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&group[start..]);
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for path in sources().into_iter().filter(|p| !is_test_file(p)) {
        let module = top_module(&path);
        let Some(mine) = layer_of(&module) else {
            unknown.push(module);
            continue;
        };
        let code = code_of(&fs::read_to_string(&path).unwrap());
        for target in imported_modules(&code) {
            if target == module {
                continue;
            }
            let target = reexported_from(&target).unwrap_or(&target).to_string();
            match layer_of(&target) {
                None => unknown.push(target),
                Some(theirs) if theirs >= mine => wrong.push(format!(
                    "{}: imports `{target}` (layer {theirs}) from `{module}` (layer {mine})",
                    path.display()
                )),
                Some(_) => {}
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS (add them here and to docs/layout.md): {unknown:?}"
    );
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports that run upward or across a layer:\n{}",
        wrong.join("\n")
    );
}

/// Functions longer than [`MAX_FN_LINES`]: `(name, lines)`. Relies on
/// rustfmt's layout: a function's closing brace is the first line after
/// its signature at the signature's indentation.
fn long_functions(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let signature = [
            "pub fn ",
            "pub(crate) fn ",
            "fn ",
            "async fn ",
            "pub async fn ",
        ]
        .iter()
        .chain(&["pub(crate) async fn ", "const fn ", "pub const fn "])
        .find_map(|p| trimmed.strip_prefix(p));
        let Some(signature) = signature else { continue };
        if trimmed.ends_with(';') {
            continue; // a trait method without a body
        }
        let close = " ".repeat(indent) + "}";
        let Some(len) = lines[i + 1..]
            .iter()
            .position(|l| *l == close || l.starts_with(&format!("{close} ")))
        else {
            continue;
        };
        if len + 2 > MAX_FN_LINES {
            out.push((first_segment(signature), len + 2));
        }
    }
    out
}

#[test]
fn rooms_stay_small() {
    let mut big = BTreeMap::new();
    for path in sources().into_iter().filter(|p| !is_test_file(p)) {
        let text = fs::read_to_string(&path).unwrap();
        let code = code_of(&text);
        let lines = code.lines().count();
        if lines > MAX_FILE_LINES {
            big.insert(path.display().to_string(), format!("{lines} lines of code"));
        }
        for (name, len) in long_functions(&code) {
            big.insert(
                format!("{}: fn {name}", path.display()),
                format!("{len} lines"),
            );
        }
    }
    assert!(
        big.is_empty(),
        "files over {MAX_FILE_LINES} lines of code or functions over {MAX_FN_LINES} lines \
         (split them by responsibility):\n{big:#?}"
    );
}

#[test]
fn the_checks_themselves_see_what_they_look_for() {
    let code = "use crate::{bus::Bus, protocol::{Message, Epoch}};\n\
                fn f() { crate::server::run(); }";
    assert_eq!(imported_modules(code), ["bus", "protocol", "server"]);
    assert_eq!(
        code_of("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { use crate::c; }"),
        "use crate::a; "
    );
    let long = format!(
        "fn big() {{\n{}}}\nfn small() {{\n}}\n",
        "    x();\n".repeat(90)
    );
    assert_eq!(long_functions(&long), [("big".to_string(), 92)]);
    assert_eq!(layer_of("protocol"), Some(0));
    assert_eq!(reexported_from("Gateway"), Some("gateway"));
    assert!(layer_of("server") > layer_of("transport"));
}

#[test]
fn every_root_reexport_is_mapped_to_its_module() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let mut seen = 0;
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub use ")) {
        let line = line.trim_end_matches(';');
        let (module, items) = line.split_once("::").expect("pub use module::item");
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',').map(str::trim) {
            let name = item.rsplit("::").next().unwrap();
            assert_eq!(
                reexported_from(name),
                Some(module),
                "src/lib.rs re-exports {name} from {module}: add it to ROOT_REEXPORTS"
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "read {seen} re-exports from src/lib.rs");
}
