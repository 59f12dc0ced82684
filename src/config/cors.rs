//! `[cors]`: each allowed origin checked here, so a typo (a path, a trailing
//! `/`, a wildcard) is a config error naming the entry, not an origin that
//! silently never matches what browsers send.

use super::raw::RawCors;
use super::validate::Validator;
use super::{ConfigError, CorsConfig};

impl Validator<'_> {
    pub(super) fn cors(&self, raw: RawCors) -> Result<CorsConfig, ConfigError> {
        let mut allow_origins = Vec::new();
        for (i, o) in raw.allow_origins.into_iter().enumerate() {
            let key = format!("cors.allow_origins[{i}]");
            allow_origins.push(origin(&o).map_err(|m| self.invalid(&key, m))?);
        }
        Ok(CorsConfig { allow_origins })
    }
}

/// `https://app.example.com[:8443]` as a browser's `Origin` spells it.
fn origin(o: &str) -> Result<String, String> {
    if o == "*" || o == "null" {
        return Err(format!(
            "`{o}` is not allowed: name each web origin (\"https://app.example.com\"), so that \
             no other page can call the gateway from a browser"
        ));
    }
    let (scheme, rest) = o
        .split_once("://")
        .ok_or_else(|| format!("`{o}` is not an origin such as \"https://app.example.com\""))?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("`{o}`: an origin's scheme is http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*']) {
        return Err(format!(
            "`{o}`: an origin is scheme://host[:port] only, with no path or trailing / \
             (browsers send it that way)"
        ));
    }
    Ok(o.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn a_wildcard_is_refused_naming_the_entry() {
        let text = "[cors]\nallow_origins = [\"https://a.example\", \"*\"]\n";
        let env = crate::secret::SecretEnv::fixed([("DASTRA_API_KEY", "k")]);
        let e = crate::config::Config::parse_with(text, std::path::Path::new("c.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cors.allow_origins[1]") && e.contains("name each web origin"),
            "{e}"
        );
    }

    #[test]
    fn origins_as_browsers_send_them() {
        assert_eq!(
            origin("https://App.example.com:8443").unwrap(),
            "https://app.example.com:8443"
        );
        for bad in [
            "*",
            "null",
            "app.example.com",
            "ftp://x",
            "https://x/",
            "https://x/app",
            "https://*.x",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
