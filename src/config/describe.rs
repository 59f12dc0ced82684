//! The effective settings as `dastra-proxy check` prints them: TOML-shaped,
//! with every secret replaced by where it comes from.

use std::fmt::{self, Write as _};

use super::{
    Config, CredentialConfig, ForwardedHeader, LogFormat, OnLimit, StoreConfig, StoreOnError,
    Upstream429,
};

fn d(v: std::time::Duration) -> humantime::FormattedDuration {
    humantime::format_duration(v)
}

fn nets(v: &[ipnet::IpNet]) -> String {
    let items: Vec<String> = v.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// Hides a password in `redis://user:pass@host` URLs; the ACL user stays.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split_once(':').map_or("", |(u, _)| u);
            let user = if user.is_empty() {
                String::new()
            } else {
                format!("{user}:")
            };
            format!("{}{user}<redacted>@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Each line holding a value set from the environment says its variable.
fn mark_env(text: &str, c: &Config) -> String {
    if c.from_env.is_empty() {
        return text.to_owned();
    }
    let mut table = String::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line);
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|ch| ch == '[' || ch == ']').to_owned();
        } else if let Some((key, _)) = t.split_once(" = ") {
            let dotted = format!("{table}.{key}");
            if let Some(e) = c.from_env.iter().find(|e| e.key == dotted) {
                out.push_str("  # from ");
                out.push_str(&e.var);
            }
        }
        out.push('\n');
    }
    out
}

pub(super) fn write(c: &Config, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut o = String::new();
    let s = &c.server;
    writeln!(o, "# effective configuration from {}", c.source.display())?;
    writeln!(
        o,
        "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\npublic_url = \"{}\"",
        s.listen, s.admin_listen, s.public_url
    )?;
    writeln!(
        o,
        "max_request_body = {}\nshutdown_grace = \"{}\"",
        s.max_request_body,
        d(s.shutdown_grace)
    )?;
    writeln!(
        o,
        "header_read_timeout = \"{}\"\nidle_timeout = \"{}\"\nbody_read_timeout = \"{}\"\n\
         max_connections = {}\nmax_connections_per_ip = {}\nmax_concurrent_streams = {}\n\
         max_buffered_body = {}\nwatch = {}\nadmin_allow = {}",
        d(s.header_read_timeout),
        d(s.idle_timeout),
        d(s.body_read_timeout),
        s.max_connections,
        s.max_connections_per_ip,
        s.max_concurrent_streams,
        s.max_buffered_body,
        s.watch,
        nets(&s.admin_allow)
    )?;
    if let Some(t) = &s.tls {
        writeln!(
            o,
            "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
            t.cert_file.display(),
            t.key_file.display()
        )?;
    }
    let u = &c.upstream;
    writeln!(
        o,
        "\n[upstream]\nurl = \"{}{}\"\nconnect_timeout = \"{}\"\ntimeout = \"{}\"\nbreaker_failures = {}\nbreaker_open = \"{}\"\nadapt = {}\nretries = {}\nretry_budget = {}",
        u.origin(),
        u.base_path,
        d(u.connect_timeout),
        d(u.timeout),
        u.breaker_failures,
        d(u.breaker_open),
        u.adapt,
        u.retries,
        u.retry_budget
    )?;
    if let Some(ca) = &u.ca_file {
        writeln!(o, "ca_file = \"{}\"", ca.display())?;
    }
    if let Some(cred) = &c.credential {
        writeln!(o, "\n[credential]")?;
        credential(&mut o, cred)?;
    }
    for n in &c.credentials {
        writeln!(o, "\n[[credentials]]\nname = \"{}\"", n.name)?;
        credential(&mut o, &n.credential)?;
        for l in n.limits.iter().flatten() {
            writeln!(
                o,
                "[[credentials.limits]]\nrequests = {}\nper = \"{}\"",
                l.requests, l.name
            )?;
        }
    }
    for l in &c.limits {
        writeln!(
            o,
            "\n[[limits]]\nrequests = {}\nper = \"{}\"",
            l.requests, l.name
        )?;
    }
    let a = &c.admission;
    let on_limit = match a.on_limit {
        OnLimit::Queue => "queue",
        OnLimit::Reject => "reject",
    };
    let u429 = match a.upstream_429 {
        Upstream429::Pause => "pause",
        Upstream429::Pass => "pass",
    };
    writeln!(
        o,
        "\n[admission]\non_limit = \"{on_limit}\"\nmax_queue = {}\nmax_wait = \"{}\"\nmargin = \"{}\"\nupstream_429 = \"{u429}\"\ndry_run = {}\naging = \"{}\"",
        a.max_queue,
        d(a.max_wait),
        d(a.margin),
        a.dry_run,
        d(a.aging)
    )?;
    let header = match c.access.forwarded_header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    writeln!(
        o,
        "\n[access]\nallow = {}\ntrusted_proxies = {}\nforwarded_header = \"{header}\"",
        nets(&c.access.allow),
        nets(&c.access.trusted_proxies)
    )?;
    for cl in &c.clients {
        writeln!(
            o,
            "\n[[clients]]\nname = \"{}\"\nkey_sha256 = \"{}\"\nweight = {}",
            cl.name,
            hex::encode(cl.key_sha256),
            cl.weight
        )?;
        if let Some(allow) = &cl.allow {
            writeln!(o, "allow = {}", nets(allow))?;
        }
        if let Some(k) = &cl.credential {
            writeln!(o, "credential = \"{k}\"")?;
        }
        if let Some(r) = cl.rate {
            writeln!(
                o,
                "rate = \"{}/{}\"\nburst = {}",
                r.count,
                d(r.period),
                r.burst
            )?;
        }
        if cl.dry_run {
            writeln!(o, "dry_run = true")?;
        }
        writeln!(o, "priority = \"{}\"", super::priority_name(cl.priority))?;
        if cl.reserve > 0.0 {
            writeln!(o, "reserve = {}", cl.reserve)?;
        }
        for l in &cl.limits {
            writeln!(
                o,
                "[[clients.limits]]\nrequests = {}\nper = \"{}\"",
                l.requests, l.name
            )?;
        }
    }
    match &c.store {
        StoreConfig::Memory { state_file } => {
            // Shown relative to the config file's directory, as it is written.
            let dir = c.source.parent().unwrap_or(std::path::Path::new(""));
            let shown = state_file.as_deref().map_or(String::new(), |f| {
                f.strip_prefix(dir).unwrap_or(f).display().to_string()
            });
            writeln!(o, "\n[store]\nkind = \"memory\"\nstate_file = \"{shown}\"")?
        }
        StoreConfig::Redis {
            url,
            key_prefix,
            on_error,
            replicas,
            ca_file,
        } => {
            let on_error = match on_error {
                StoreOnError::Local => "local",
                StoreOnError::Reject => "reject",
            };
            // Written in this file: shown without its password; from env or
            // a file: only where it comes from.
            let shown = if url.source() == &crate::secret::SecretSource::File(c.source.clone()) {
                redact_url(url.expose())
            } else {
                url.to_string()
            };
            writeln!(
                o,
                "\n[store]\nkind = \"redis\"\nurl = \"{shown}\"\nkey_prefix = \"{key_prefix}\"\non_error = \"{on_error}\"\nreplicas = {replicas}"
            )?;
            if let Some(ca) = ca_file {
                writeln!(o, "ca_file = \"{}\"", ca.display())?;
            }
        }
    }
    let k = &c.cache;
    writeln!(
        o,
        "\n[cache]\ncoalesce = {}\nmax_entry = {}\nmax_bytes = {}\nstale_if_error = \"{}\"\nstale_while_revalidate = \"{}\"",
        k.coalesce,
        k.max_entry,
        k.max_bytes,
        humantime::format_duration(k.stale_if_error),
        humantime::format_duration(k.stale_while_revalidate)
    )?;
    for r in &k.rules {
        writeln!(
            o,
            "[[cache.rules]]\npath = \"{}\"\nttl = \"{}\"",
            r.path,
            humantime::format_duration(r.ttl)
        )?;
    }
    let origins: Vec<String> = c
        .cors
        .allow_origins
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect();
    writeln!(o, "\n[cors]\nallow_origins = [{}]", origins.join(", "))?;
    let t = &c.tracing;
    writeln!(
        o,
        "\n[tracing]\notlp_endpoint = \"{}\"\nsample_ratio = {:?}\nservice_name = \"{}\"",
        t.otlp_endpoint
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        t.sample_ratio,
        t.service_name
    )?;
    let format = match c.log.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    write!(
        o,
        "\n[log]\nformat = \"{format}\"\nlevel = \"{}\"",
        c.log.level
    )?;
    f.write_str(&mark_env(&o, c))
}

/// A credential's keys, secrets named by where they come from, never shown.
fn credential(o: &mut String, c: &CredentialConfig) -> fmt::Result {
    match c {
        CredentialConfig::ApiKey(k) => writeln!(o, "kind = \"api_key\"\napi_key = \"{k}\""),
        CredentialConfig::Basic { public, private } => writeln!(
            o,
            "kind = \"basic\"\npublic_key = \"{public}\"\nprivate_key = \"{private}\""
        ),
        CredentialConfig::OAuth2 {
            token_url,
            scope,
            public,
            private,
        } => writeln!(
            o,
            "kind = \"oauth2\"\ntoken_url = \"{token_url}\"\nscope = \"{scope}\"\npublic_key = \"{public}\"\nprivate_key = \"{private}\""
        ),
        CredentialConfig::Passthrough {
            max_keys,
            max_keys_per_ip,
        } => writeln!(
            o,
            "kind = \"passthrough\"\nmax_keys = {max_keys}\nmax_keys_per_ip = {max_keys_per_ip}"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_password_is_hidden() {
        assert_eq!(
            super::redact_url("redis://u:pw@h:6379/0"),
            "redis://u:<redacted>@h:6379/0"
        );
        assert_eq!(
            super::redact_url("rediss+cluster://:pw@h1:1,h2:2"),
            "rediss+cluster://<redacted>@h1:1,h2:2"
        );
        assert_eq!(super::redact_url("redis://h:6379"), "redis://h:6379");
    }
}
