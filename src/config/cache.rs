//! `[cache]`: coalescing on by default, caching only where a rule names a
//! path pattern. Patterns are checked here, so a typo is a config error with
//! the file and key, not a rule that silently never matches.

use super::raw::RawCache;
use super::units::parse_size;
use super::validate::Validator;
use super::{CacheConfig, CacheRule, ConfigError};

impl Validator<'_> {
    pub(super) fn cache(&self, raw: RawCache) -> Result<CacheConfig, ConfigError> {
        let size = |key: &str, v: Option<String>, default: u64| -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => parse_size(&s).map_err(|m| self.invalid(key, m)),
            }
        };
        let max_entry = size("cache.max_entry", raw.max_entry, 1 << 20)?;
        let max_bytes = size("cache.max_bytes", raw.max_bytes, 64 << 20)?;
        if max_entry > max_bytes {
            return Err(self.invalid(
                "cache.max_entry",
                "is larger than cache.max_bytes: no answer could ever be kept",
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let key = |k: &str| format!("cache.rules[{i}].{k}");
            let path = r.path.ok_or_else(|| {
                self.invalid(
                    &key("path"),
                    "needed: a path pattern such as \"/v1/ws/*/Actors\"",
                )
            })?;
            let ttl = r.ttl.filter(|t| !t.is_zero()).ok_or_else(|| {
                self.invalid(&key("ttl"), "needed, and more than zero (e.g. \"30s\")")
            })?;
            let segments = pattern(&path).map_err(|m| self.invalid(&key("path"), m))?;
            rules.push(CacheRule {
                path,
                segments,
                ttl,
            });
        }
        Ok(CacheConfig {
            coalesce: raw.coalesce.unwrap_or(true),
            max_entry,
            max_bytes,
            stale_if_error: raw.stale_if_error.unwrap_or_default(),
            stale_while_revalidate: raw.stale_while_revalidate.unwrap_or_default(),
            rules,
        })
    }
}

/// `/v1/ws/*/Actors` -> [v1, ws, *, Actors]; `*` stands for exactly one segment.
fn pattern(path: &str) -> Result<Vec<Option<String>>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("`{path}` must start with /"));
    };
    if path.contains(['?', '#']) {
        return Err(format!(
            "`{path}`: a pattern matches the path only, without ? or #"
        ));
    }
    rest.split('/')
        .map(|seg| match seg {
            "" => Err(format!("`{path}` has an empty segment")),
            "*" => Ok(None),
            s if s.contains('*') => Err(format!(
                "`{path}`: * stands for a whole segment (\"/v1/ws/*/Actors\"), not part of one"
            )),
            s => Ok(Some(s.to_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::pattern;
    use crate::config::CacheRule;

    #[test]
    fn patterns_match_whole_segments() {
        let rule = CacheRule {
            path: String::new(),
            segments: pattern("/v1/ws/*/Actors").unwrap(),
            ttl: std::time::Duration::from_secs(1),
        };
        assert!(rule.matches("/v1/ws/42/Actors"));
        assert!(!rule.matches("/v1/ws/42/Actors/7"));
        assert!(!rule.matches("/v1/ws//Actors"));
        assert!(!rule.matches("/v1/ws/42/Actor"));
        assert!(pattern("v1/x").is_err());
        assert!(pattern("/v1/a*").is_err());
        assert!(pattern("/v1//x").is_err());
        assert!(pattern("/v1/x?y").is_err());
    }
}
