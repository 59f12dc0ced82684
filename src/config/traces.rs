//! `[tracing]`: the collector's URL checked here, so a typo is a config error
//! naming the key rather than spans that silently go nowhere.

use http::Uri;

use super::raw::RawTracing;
use super::validate::Validator;
use super::{ConfigError, TracingConfig};

/// OTLP/HTTP's path for traces, added to a collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

impl Validator<'_> {
    pub(super) fn tracing(&self, raw: RawTracing) -> Result<TracingConfig, ConfigError> {
        let otlp_endpoint = match raw.otlp_endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(endpoint(url).map_err(|m| self.invalid("tracing.otlp_endpoint", m))?),
        };
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(self.invalid(
                "tracing.sample_ratio",
                format!("{sample_ratio} is not a share between 0.0 and 1.0"),
            ));
        }
        let service_name = raw.service_name.unwrap_or_else(|| "dastra-proxy".into());
        if service_name.trim().is_empty() {
            return Err(self.invalid(
                "tracing.service_name",
                "must not be empty: it names this proxy in every trace",
            ));
        }
        Ok(TracingConfig {
            otlp_endpoint,
            sample_ratio,
            service_name,
        })
    }
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`; a URL that
/// already ends in `/v1/traces` is kept as written.
fn endpoint(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL such as \"http://otel-collector:4318\""))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "`{url}` is not an http:// or https:// URL such as \"http://otel-collector:4318\" \
             (OTLP over HTTP; gRPC's port 4317 is not spoken)"
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // It would be printed with every export error and by `check`.
        return Err(
            "a collector URL takes no user or password (put the collector beside the \
                    proxy, or behind an authenticating sidecar)"
                .to_owned(),
        );
    }
    if uri.query().is_some() {
        return Err(format!("`{url}`: a collector URL takes no query string"));
    }
    let path = uri.path().trim_end_matches('/');
    if path.ends_with(TRACES_PATH) {
        return Ok(uri);
    }
    let full = format!(
        "{}://{}{path}{TRACES_PATH}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    );
    full.parse().map_err(|_| format!("`{url}` is not a URL"))
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn a_collectors_base_url_gets_the_traces_path() {
        assert_eq!(
            endpoint("http://otel:4318").unwrap().to_string(),
            "http://otel:4318/v1/traces"
        );
        assert_eq!(
            endpoint("https://otel.example/base/").unwrap().to_string(),
            "https://otel.example/base/v1/traces"
        );
        assert_eq!(
            endpoint("http://otel:4318/v1/traces").unwrap().to_string(),
            "http://otel:4318/v1/traces"
        );
        for bad in [
            "otel:4318",
            "grpc://otel:4317",
            "http://",
            "http://o/?a=1",
            "a b",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused_naming_the_key() {
        let env = crate::secret::SecretEnv::fixed([("DASTRA_API_KEY", "k")]);
        let text = "[tracing]\nsample_ratio = 1.5\n";
        let e = crate::config::Config::parse_with(text, std::path::Path::new("c.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tracing.sample_ratio") && e.contains("1.5"),
            "{e}"
        );
        let ok =
            crate::config::Config::parse_with("", std::path::Path::new("c.toml"), &env).unwrap();
        assert_eq!(ok.tracing.otlp_endpoint, None);
        assert_eq!(ok.tracing.sample_ratio, 1.0);
        assert_eq!(ok.tracing.service_name, "dastra-proxy");
    }
}
