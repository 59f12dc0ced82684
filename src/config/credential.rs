//! The `[credential]` table: which kind, which secrets it reads, and the
//! keys each kind takes (a key another kind uses is an error, not ignored).

use http::Uri;

use super::error::ConfigError;
use super::raw;
use super::types::*;
use super::validate::Validator;
use super::MAX_STATE_SLOTS;
use crate::secret::Secret;
use subtle::ConstantTimeEq as _;

/// What the single `[credential]` is called in metrics and `/quota`.
pub const DEFAULT_CREDENTIAL: &str = "default";

impl Validator<'_> {
    /// `[credential]` and `[[credentials]]`; with neither, the API key
    /// from `DASTRA_API_KEY` (every 0.2 config keeps working).
    pub(super) fn credentials(
        &self,
        single: Option<raw::RawCredential>,
        many: Vec<raw::RawCredential>,
    ) -> Result<(Option<CredentialConfig>, Vec<NamedCredential>), ConfigError> {
        let single = match single {
            Some(raw) if raw.name.is_some() => {
                return Err(self.invalid(
                    "credential.name",
                    "[credential] is the default and has no name; name keys in [[credentials]]",
                ))
            }
            Some(raw) if raw.limits.is_some() => {
                return Err(self.invalid(
                    "credential.limits",
                    "[credential] counts in the top-level [[limits]]",
                ))
            }
            Some(raw) => Some(self.credential(raw, "credential")?),
            None if many.is_empty() => {
                Some(self.credential(raw::RawCredential::default(), "credential")?)
            }
            None => None,
        };
        let mut out: Vec<NamedCredential> = Vec::with_capacity(many.len());
        for (i, mut raw) in many.into_iter().enumerate() {
            let at = format!("credentials[{i}]");
            let name = raw.name.take().unwrap_or_default();
            if !super::clients::valid_name(&name) {
                return Err(self.invalid(
                    &format!("{at}.name"),
                    "1 to 64 characters of A-Z a-z 0-9 - _ . (clients name it in `credential`)",
                ));
            }
            if name == DEFAULT_CREDENTIAL || out.iter().any(|o| o.name == name) {
                return Err(self.invalid(
                    &format!("{at}.name"),
                    format!("`{name}` is reserved (the [credential] table) or used twice"),
                ));
            }
            if raw.kind.as_deref() == Some("passthrough") {
                return Err(self.invalid(
                    &format!("{at}.kind"),
                    "\"passthrough\" holds no key; it can only be the single [credential]",
                ));
            }
            let limits = match raw.limits.take() {
                Some(l) => Some(self.limits(l, &format!("{at}.limits"))?),
                None => None,
            };
            out.push(NamedCredential {
                credential: self.credential(raw, &at)?,
                name,
                limits,
            });
        }
        if matches!(single, Some(CredentialConfig::Passthrough { .. })) && !out.is_empty() {
            return Err(self.invalid(
                "credential.kind",
                "\"passthrough\" cannot be combined with [[credentials]]: callers hold their own keys",
            ));
        }
        Ok((single, out))
    }

    /// Every client's `credential` names one that exists, and calls of a
    /// client that names none have the default to go out with.
    pub(super) fn routes(
        &self,
        single: Option<&CredentialConfig>,
        named: &[NamedCredential],
        clients: &[ClientConfig],
    ) -> Result<(), ConfigError> {
        for (i, c) in clients.iter().enumerate() {
            match &c.credential {
                Some(n) if !named.iter().any(|k| &k.name == n) => {
                    return Err(self.invalid(
                        &format!("clients[{i}].credential"),
                        format!("no [[credentials]] is named `{n}`"),
                    ))
                }
                None if single.is_none() => {
                    return Err(self.invalid(
                        &format!("clients[{i}].credential"),
                        "names no credential and there is no [credential] to default to",
                    ))
                }
                _ => {}
            }
        }
        if clients.is_empty() && single.is_none() {
            return Err(self.invalid(
                "credential",
                "with only [[credentials]], callers must be [[clients]] naming one: calls \
                 without a client key would have no Dastra credential",
            ));
        }
        Ok(())
    }

    /// `at`: where the table is, `credential` or `credentials[i]`, for messages.
    pub(super) fn credential(
        &self,
        raw: raw::RawCredential,
        at: &str,
    ) -> Result<CredentialConfig, ConfigError> {
        let kind = raw.kind.as_deref().unwrap_or("api_key");
        let unused = |keys: &[(&str, bool)]| -> Result<(), ConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(self.invalid(
                    &format!("{at}.{k}"),
                    format!("not used by kind = \"{kind}\""),
                )),
                None => Ok(()),
            }
        };
        let api_set = raw.api_key_env.is_some() || raw.api_key_file.is_some();
        let pair_set = raw.public_key_env.is_some()
            || raw.public_key_file.is_some()
            || raw.private_key_env.is_some()
            || raw.private_key_file.is_some();
        let oauth_set = raw.token_url.is_some() || raw.scope.is_some();
        if kind != "passthrough" {
            unused(&[
                ("max_keys", raw.max_keys.is_some()),
                ("max_keys_per_ip", raw.max_keys_per_ip.is_some()),
            ])?;
        }
        match kind {
            "api_key" => {
                unused(&[("public_key_env", pair_set), ("token_url", oauth_set)])?;
                let env = if api_set {
                    raw.api_key_env
                } else {
                    Some("DASTRA_API_KEY".to_owned())
                };
                Ok(CredentialConfig::ApiKey(self.secret(
                    &format!("{at}.api_key"),
                    env,
                    raw.api_key_file,
                )?))
            }
            "basic" => {
                unused(&[("api_key_env", api_set), ("token_url", oauth_set)])?;
                let (public, private) = self.key_pair(raw, at)?;
                Ok(CredentialConfig::Basic { public, private })
            }
            "oauth2" => {
                unused(&[("api_key_env", api_set)])?;
                let url = raw
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://account.dastra.eu/connect/token".to_owned());
                let token_url: Uri = url
                    .parse()
                    .ok()
                    .filter(|u: &Uri| u.scheme().is_some() && u.authority().is_some())
                    .ok_or_else(|| {
                        self.invalid(
                            &format!("{at}.token_url"),
                            format!("`{url}` is not an absolute URL"),
                        )
                    })?;
                let scope = raw.scope.clone().unwrap_or_else(|| "api1".to_owned());
                let (public, private) = self.key_pair(raw, at)?;
                Ok(CredentialConfig::OAuth2 {
                    token_url,
                    scope,
                    public,
                    private,
                })
            }
            "passthrough" => {
                unused(&[
                    ("api_key_env", api_set),
                    ("public_key_env", pair_set),
                    ("token_url", oauth_set),
                ])?;
                let max_keys = usize::try_from(raw.max_keys.unwrap_or(1000))
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        self.invalid(&format!("{at}.max_keys"), "must be between 1 and 1000000")
                    })?;
                // The default never exceeds max_keys.
                let max_keys_per_ip = raw
                    .max_keys_per_ip
                    .map_or(Ok(50.min(max_keys)), usize::try_from)
                    .ok()
                    .filter(|n| (1..=max_keys).contains(n))
                    .ok_or_else(|| {
                        self.invalid(
                            &format!("{at}.max_keys_per_ip"),
                            format!("must be between 1 and max_keys ({max_keys})"),
                        )
                    })?;
                Ok(CredentialConfig::Passthrough {
                    max_keys,
                    max_keys_per_ip,
                })
            }
            other => Err(self.invalid(
                &format!("{at}.kind"),
                format!("unknown kind `{other}` (api_key, basic, oauth2 or passthrough)"),
            )),
        }
    }

    /// Dastra's public/private key pair, used by both `basic` and `oauth2`.
    fn key_pair(&self, raw: raw::RawCredential, at: &str) -> Result<(Secret, Secret), ConfigError> {
        Ok((
            self.secret(
                &format!("{at}.public_key"),
                raw.public_key_env,
                raw.public_key_file,
            )?,
            self.secret(
                &format!("{at}.private_key"),
                raw.private_key_env,
                raw.private_key_file,
            )?,
        ))
    }
}

impl CredentialConfig {
    /// The secrets it reads (for `server.watch` and comparisons).
    pub fn secrets(&self) -> Vec<&Secret> {
        match self {
            CredentialConfig::ApiKey(k) => vec![k],
            CredentialConfig::Basic { public, private }
            | CredentialConfig::OAuth2 {
                public, private, ..
            } => vec![public, private],
            CredentialConfig::Passthrough { .. } => vec![],
        }
    }

    /// The secret that names the Dastra API, which Dastra counts quota per.
    fn identity(&self) -> Option<&Secret> {
        self.secrets().first().copied()
    }
}

impl Config {
    /// The state file's ring at start-up: for each credential its largest
    /// window's N, at least Dastra's 10,000 (so a reload up to it stays
    /// exact) and at most [`MAX_STATE_SLOTS`]; together, so busy credentials
    /// do not push each other's sends out; in passthrough, room for several
    /// caller credentials. Beyond it the ring grows (`state_file::grow`).
    pub fn state_slots(&self) -> u64 {
        let largest = |limits: &[Limit]| {
            (limits.iter().map(|l| u64::from(l.requests)).max())
                .unwrap_or(0)
                .clamp(10_000, MAX_STATE_SLOTS)
        };
        let default = match (&self.credential, self.passthrough()) {
            (None, _) => 0,
            (Some(_), None) => largest(&self.limits),
            (Some(_), Some(_)) => largest(&self.limits) * 4,
        };
        let named: u64 = (self.credentials.iter())
            .map(|n| largest(self.limits_of(n)))
            .sum();
        // A split credential's send is written once more, in its part.
        let most = |l: &[Limit]| l.iter().map(|l| u64::from(l.requests)).max().unwrap_or(0);
        let parts: u64 = (self.splits().iter())
            .map(|s| most(&s.rest) + s.reserves.iter().map(|(_, l)| most(l)).sum::<u64>())
            .sum();
        default + named + parts
    }

    /// Every credential with where it is written (`credential`,
    /// `credentials[i]`), the default first.
    pub fn every_credential(&self) -> Vec<(String, &CredentialConfig)> {
        let single = self.credential.iter().map(|c| ("credential".to_owned(), c));
        let named = (self.credentials.iter().enumerate())
            .map(|(i, n)| (format!("credentials[{i}]"), &n.credential));
        single.chain(named).collect()
    }

    /// Passthrough's bounds, when the single credential is the caller's own.
    pub fn passthrough(&self) -> Option<(usize, usize)> {
        match self.credential {
            Some(CredentialConfig::Passthrough {
                max_keys,
                max_keys_per_ip,
            }) => Some((max_keys, max_keys_per_ip)),
            _ => None,
        }
    }

    /// The windows a named credential's sends count in.
    pub fn limits_of<'a>(&'a self, named: &'a NamedCredential) -> &'a [Limit] {
        named.limits.as_deref().unwrap_or(&self.limits)
    }

    /// Two credentials holding the same key: Dastra counts one quota, which
    /// the proxy would hand out twice.
    pub(super) fn shared_secrets(&self) -> Vec<String> {
        let all = self.every_credential();
        let mut out = Vec::new();
        for (i, (a, ca)) in all.iter().enumerate() {
            for (b, cb) in &all[i + 1..] {
                let same = match (ca.identity(), cb.identity()) {
                    (Some(x), Some(y)) => {
                        bool::from(x.expose().as_bytes().ct_eq(y.expose().as_bytes()))
                    }
                    _ => false,
                };
                if same {
                    out.push(format!(
                        "{a} and {b} hold the same Dastra key: Dastra counts one quota for it, \
                         which this proxy would count twice (up to twice its limits sent)"
                    ));
                }
            }
        }
        out
    }
}
