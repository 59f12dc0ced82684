//! Config errors, each naming the file, and where TOML gives them the line,
//! column and key.

use std::path::{Path, PathBuf};

use crate::secret::SecretError;

/// A config that cannot be used, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", path.display(), key_prefix(key))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{}{}: `{key}`{}: {message}", path.display(), line_of(at), var_of(at))]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
        at: Option<Place>,
    },
    #[error("{}{}: `{key}`{}: {source}", path.display(), line_of(at), var_of(at))]
    Secret {
        path: PathBuf,
        key: String,
        source: SecretError,
        at: Option<Place>,
    },
}

/// Where a key found wrong after parsing was set: a line of the file, or an
/// environment variable that overrode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Line { line: usize, column: usize },
    Env(String),
}

fn line_of(at: &Option<Place>) -> String {
    match at {
        Some(Place::Line { line, column }) => format!(":{line}:{column}"),
        _ => String::new(),
    }
}

fn var_of(at: &Option<Place>) -> String {
    match at {
        Some(Place::Env(var)) => format!(" (from {var})"),
        _ => String::new(),
    }
}

impl ConfigError {
    /// Names where the key of a check made after parsing was set: the
    /// variable that set it, else its line in `text` (or the nearest
    /// enclosing table's when the key itself is absent, e.g. a missing key).
    pub(super) fn located(mut self, text: &str, from_env: &[super::FromEnv]) -> Self {
        let secret = matches!(self, Self::Secret { .. });
        if let Self::Invalid { key, at, .. } | Self::Secret { key, at, .. } = &mut self {
            if at.is_none() {
                // A secret is named by `<key>_env` or `<key>_file` in the file.
                let written = secret
                    .then(|| {
                        ["_env", "_file"]
                            .iter()
                            .map(|s| format!("{key}{s}"))
                            .find(|k| locate(text, k).is_some_and(|(_, whole)| whole))
                    })
                    .flatten()
                    .unwrap_or_else(|| key.clone());
                let plain = strip_indices(key);
                *at = match from_env.iter().find(|e| plain.starts_with(&e.key)) {
                    Some(e) => Some(Place::Env(e.var.clone())),
                    None => locate(text, &written).map(|(offset, _)| {
                        let (line, column) = line_column(text, offset);
                        Place::Line { line, column }
                    }),
                };
            }
        }
        self
    }
}

fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The byte offset of a dotted key such as `limits[0].requests` or
/// `access.allow[1]`: of the deepest part the file has, and whether that is
/// the whole key.
fn locate(text: &str, key: &str) -> Option<(usize, bool)> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut found = None;
    let mut whole = false;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, item)) = table.get_key_value(name) else {
            break;
        };
        found = k.span().map(|s| s.start).or(found);
        let item = match (index, item) {
            (Some(i), toml_edit::Item::ArrayOfTables(a)) => match a.get(i) {
                Some(t) => {
                    found = t.span().map(|s| s.start).or(found);
                    table = t;
                    continue;
                }
                None => break,
            },
            (Some(i), toml_edit::Item::Value(toml_edit::Value::Array(a))) => {
                if let Some(v) = a.get(i) {
                    found = v.span().map(|s| s.start).or(found);
                    whole = parts.peek().is_none();
                }
                break;
            }
            (_, item) => item,
        };
        match item.as_table_like() {
            Some(t) if parts.peek().is_some() => table = t,
            _ => {
                if let Some(v) = item.as_value() {
                    found = v.span().map(|s| s.start).or(found);
                }
                whole = parts.peek().is_none();
                break;
            }
        }
    }
    found.map(|offset| (offset, whole))
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default()
}

pub(super) fn parse_error(e: toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (line, column, key_at(text, span.start))
        }
        None => (0, 0, None),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        key,
        message: in_words(e.message().trim()),
    }
}

/// The dotted key (`server.listen`) written on the line that holds `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) if !line.trim_start().starts_with('[') => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), _) => Some(t),
        (None, None) => None,
    }
}

/// serde's type names in the words of the file ("expected i64" means
/// nothing to an operator).
fn in_words(message: &str) -> String {
    const WORDS: [(&str, &str); 7] = [
        ("expected i64", "expected a whole number, like 100"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, like [\"a\", \"b\"]",
        ),
        (
            "expected a duration",
            "expected a duration in a string, like \"30s\"",
        ),
        ("expected a string", "expected a string in quotes"),
        ("expected a map", "expected a table"),
        ("integer `", "number `"),
    ];
    let mut out = message.to_owned();
    for (from, to) in WORDS {
        out = out.replace(from, to);
    }
    if let Some(i) = out.find("expected struct Raw") {
        out.replace_range(i.., "expected a table");
    }
    out
}
