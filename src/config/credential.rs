//! The `[credential]` table: which kind, which secrets it reads, and the
//! keys each kind takes (a key another kind uses is an error, not ignored).

use http::Uri;

use super::error::ConfigError;
use super::raw;
use super::types::*;
use super::validate::Validator;
use crate::secret::Secret;

impl Validator<'_> {
    pub(super) fn credential(
        &self,
        raw: raw::RawCredential,
    ) -> Result<CredentialConfig, ConfigError> {
        let kind = raw.kind.as_deref().unwrap_or("api_key");
        let unused = |keys: &[(&str, bool)]| -> Result<(), ConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(self.invalid(
                    &format!("credential.{k}"),
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
                    "credential.api_key",
                    env,
                    raw.api_key_file,
                )?))
            }
            "basic" => {
                unused(&[("api_key_env", api_set), ("token_url", oauth_set)])?;
                let (public, private) = self.key_pair(raw)?;
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
                            "credential.token_url",
                            format!("`{url}` is not an absolute URL"),
                        )
                    })?;
                let scope = raw.scope.clone().unwrap_or_else(|| "api1".to_owned());
                let (public, private) = self.key_pair(raw)?;
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
                        self.invalid("credential.max_keys", "must be between 1 and 1000000")
                    })?;
                // The default never exceeds max_keys.
                let max_keys_per_ip = raw
                    .max_keys_per_ip
                    .map_or(Ok(50.min(max_keys)), usize::try_from)
                    .ok()
                    .filter(|n| (1..=max_keys).contains(n))
                    .ok_or_else(|| {
                        self.invalid(
                            "credential.max_keys_per_ip",
                            format!("must be between 1 and max_keys ({max_keys})"),
                        )
                    })?;
                Ok(CredentialConfig::Passthrough {
                    max_keys,
                    max_keys_per_ip,
                })
            }
            other => Err(self.invalid(
                "credential.kind",
                format!("unknown kind `{other}` (api_key, basic, oauth2 or passthrough)"),
            )),
        }
    }

    /// Dastra's public/private key pair, used by both `basic` and `oauth2`.
    fn key_pair(&self, raw: raw::RawCredential) -> Result<(Secret, Secret), ConfigError> {
        Ok((
            self.secret(
                "credential.public_key",
                raw.public_key_env,
                raw.public_key_file,
            )?,
            self.secret(
                "credential.private_key",
                raw.private_key_env,
                raw.private_key_file,
            )?,
        ))
    }
}
