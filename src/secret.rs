//! Secrets named in the config by `*_env` or `*_file`, read once at start-up.
//!
//! The value lives in a [`secrecy::SecretString`], so `Debug`, logs, errors and
//! `check` output can only ever show where a secret came from, never what it is.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;

/// Where `*_env` secrets are looked up: the process environment, or a fixed
/// map so that tests never mutate the process environment (which races with
/// every other thread reading it). Files are read from disk either way.
#[derive(Debug, Clone, Default)]
pub struct SecretEnv {
    fixed: Option<HashMap<String, String>>,
}

impl SecretEnv {
    /// The process environment.
    pub fn system() -> Self {
        Self { fixed: None }
    }

    /// Only these variables exist.
    pub fn fixed<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            fixed: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// Every variable whose name starts with `prefix` (names and values
    /// that are not Unicode are skipped).
    pub fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        match &self.fixed {
            Some(map) => map
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(k, _)| k.starts_with(prefix))
                .collect(),
        }
    }

    fn var(&self, name: &str) -> Result<String, SecretError> {
        match &self.fixed {
            Some(map) => map
                .get(name)
                .cloned()
                .ok_or_else(|| SecretError::MissingEnv(name.to_owned())),
            None => match std::env::var(name) {
                Ok(v) => Ok(v),
                Err(std::env::VarError::NotPresent) => {
                    Err(SecretError::MissingEnv(name.to_owned()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::NotUnicode(name.to_owned()))
                }
            },
        }
    }
}

/// Where a secret is read from: the config names the place, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Why a secret could not be read; names the variable or file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret from {0} is empty")]
    Empty(SecretSource),
}

/// A loaded secret together with where it came from.
#[derive(Clone)]
pub struct Secret {
    source: SecretSource,
    value: SecretString,
}

impl Secret {
    /// Reads the secret now; a missing or empty one is an error, so a
    /// misconfigured proxy stops at start-up instead of sending no credential.
    pub fn load(source: SecretSource, env: &SecretEnv) -> Result<Self, SecretError> {
        let raw = match &source {
            SecretSource::Env(name) => env.var(name)?,
            SecretSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(source));
        }
        Ok(Self {
            source,
            value: SecretString::from(trimmed.to_owned()),
        })
    }

    /// Builds a secret from a value held in memory (tokens fetched at run time).
    pub fn from_value(source: SecretSource, value: String) -> Self {
        Self {
            source,
            value: SecretString::from(value),
        }
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The only way to the value; call sites are easy to audit by this name.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

/// Same source and same value (compared in constant time): a reload that
/// names the same secret, still holding the same value, changes nothing.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && bool::from(self.expose().as_bytes().ct_eq(other.expose().as_bytes()))
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted from {}>", self.source)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::from_value(SecretSource::Env("X".into()), "hunter2-secret".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-secret");
    }

    #[test]
    fn file_secret_is_trimmed_and_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(
            Secret::load(SecretSource::File(p.clone()), &SecretEnv::system())
                .unwrap()
                .expose(),
            "abc"
        );
        std::fs::write(&p, "\n").unwrap();
        let err = Secret::load(SecretSource::File(p), &SecretEnv::system()).unwrap_err();
        assert!(matches!(err, SecretError::Empty(_)), "{err}");
    }

    #[test]
    fn missing_env_names_the_variable() {
        let err = Secret::load(
            SecretSource::Env("DASTRA_PROXY_TEST_UNSET_VAR".into()),
            &SecretEnv::fixed([("OTHER", "x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("DASTRA_PROXY_TEST_UNSET_VAR"));
    }
}
