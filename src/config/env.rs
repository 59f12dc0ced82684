//! Keys from the environment (SPEC §9.2): `DASTRA_PROXY__<TABLE>__<KEY>`,
//! upper case, a double underscore between levels; the value is a TOML value
//! (a bare word that is not one is a string). The environment beats the
//! file; an unknown name is an error, as an unknown key in the file is.

use std::path::Path;

use serde::Deserialize as _;

use super::error::ConfigError;
use super::raw::RawConfig;

/// What every such variable's name starts with.
pub(super) const PREFIX: &str = "DASTRA_PROXY__";

/// A key set from the environment: its dotted path and its variable, for
/// `check` to say where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromEnv {
    pub key: String,
    pub var: String,
}

/// The file's raw config with the variables laid over it.
pub(super) fn apply(
    text: &str,
    mut vars: Vec<(String, String)>,
    path: &Path,
) -> Result<(RawConfig, Vec<FromEnv>), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
        at: None,
    };
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| super::error::parse_error(e, text, path))?;
    vars.sort();
    let mut set = Vec::new();
    for (var, value) in vars {
        let rest = &var[PREFIX.len()..];
        let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if keys.len() < 2 || keys.iter().any(String::is_empty) {
            return Err(invalid(
                &var,
                "expected DASTRA_PROXY__<TABLE>__<KEY> (a double underscore between levels)".into(),
            ));
        }
        let dotted = keys.join(".");
        let (leaf, tables) = keys.split_last().expect("two or more");
        let mut at = &mut table;
        for (i, k) in tables.iter().enumerate() {
            let entry = at
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(invalid(
                        &var,
                        format!("`{}` is not a table", tables[..=i].join(".")),
                    ))
                }
            };
        }
        at.insert(leaf.clone(), value_of(&value));
        set.push(FromEnv { key: dotted, var });
    }
    let raw = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
        let vars: Vec<&str> = set.iter().map(|s| s.var.as_str()).collect();
        invalid(&vars.join(", "), e.message().trim().to_owned())
    })?;
    Ok((raw, set))
}

/// A TOML value, or the text as a string when it is not one
/// (`0.0.0.0:8080`, `reject`).
fn value_of(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_owned())),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_or_strings() {
        assert_eq!(value_of("reject"), toml::Value::String("reject".into()));
        assert_eq!(
            value_of("0.0.0.0:8080"),
            toml::Value::String("0.0.0.0:8080".into())
        );
        assert_eq!(value_of("42"), toml::Value::Integer(42));
        assert_eq!(value_of("true"), toml::Value::Boolean(true));
        assert_eq!(
            value_of(r#"["10.0.0.0/8", "::1/128"]"#),
            toml::Value::Array(vec!["10.0.0.0/8".into(), "::1/128".into()])
        );
        assert_eq!(
            value_of(r#""quoted""#),
            toml::Value::String("quoted".into())
        );
    }

    fn load(file: &str, vars: &[(&str, &str)]) -> Result<super::super::Config, ConfigError> {
        let mut all = vec![("K", "key")];
        all.extend_from_slice(vars);
        let env = crate::secret::SecretEnv::fixed(all);
        let text = format!("[credential]\napi_key_env = \"K\"\n{file}");
        super::super::Config::parse_with(&text, Path::new("c.toml"), &env)
    }

    #[test]
    fn the_environment_beats_the_file_and_check_names_the_variable() {
        let c = load(
            "[admission]\non_limit = \"queue\"\nmax_queue = 5\n",
            &[
                ("DASTRA_PROXY__SERVER__LISTEN", "0.0.0.0:8080"),
                ("DASTRA_PROXY__ACCESS__ALLOW", r#"["10.0.0.0/8"]"#),
                ("DASTRA_PROXY__ADMISSION__ON_LIMIT", "reject"),
                ("DASTRA_PROXY__CACHE__COALESCE", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(
            c.access.allow,
            vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
        );
        assert_eq!(c.admission.on_limit, super::super::OnLimit::Reject);
        assert_eq!(c.admission.max_queue, 5, "the file's other keys stay");
        assert!(!c.cache.coalesce);
        let shown = c.to_string();
        assert!(
            shown.contains("listen = \"0.0.0.0:8080\"  # from DASTRA_PROXY__SERVER__LISTEN"),
            "{shown}"
        );
        assert!(
            shown.contains("# from DASTRA_PROXY__ADMISSION__ON_LIMIT"),
            "{shown}"
        );
        assert!(
            !shown.contains("admin_listen = \"127.0.0.1:9090\"  # from"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_or_malformed_names_are_errors_that_name_the_variable() {
        let e = load("", &[("DASTRA_PROXY__SERVER__LISTN", "0.0.0.0:1")]).unwrap_err();
        assert!(e.to_string().contains("DASTRA_PROXY__SERVER__LISTN"), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = load("", &[("DASTRA_PROXY__SERVER", "x")]).unwrap_err();
        assert!(e.to_string().contains("DASTRA_PROXY__SERVER"), "{e}");
        let e = load("", &[("DASTRA_PROXY__SERVER__LISTEN__X", "1")]).unwrap_err();
        assert!(
            e.to_string().contains("DASTRA_PROXY__SERVER__LISTEN__X"),
            "{e}"
        );
        let e = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[("DASTRA_PROXY__SERVER__LISTEN__X", "1")],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("`server.listen` is not a table"),
            "{e}"
        );
        let e = load("", &[("DASTRA_PROXY__ADMISSION__ON_LIMIT", "sometimes")]).unwrap_err();
        assert!(e.to_string().contains("admission.on_limit"), "{e}");
    }
}
