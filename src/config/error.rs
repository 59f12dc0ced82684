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
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: `{key}`: {source}", path.display())]
    Secret {
        path: PathBuf,
        key: String,
        source: SecretError,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default()
}

pub(super) fn parse_error(e: toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column, key_at(text, span.start))
        }
        None => (0, 0, None),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        key,
        message: e.message().trim().to_owned(),
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
