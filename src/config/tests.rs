//! Config loading and validation, through the real parser, on fixed secrets.

use std::path::Path;
use std::time::Duration;

use super::*;

/// The only variables these tests' configs may read.
fn env() -> SecretEnv {
    SecretEnv::fixed([
        ("CFG_TEST_KEY", "k"),
        ("CFG_REDIS_URL", "rediss://app:s3cret-pw@redis.corp:6380"),
        ("DASTRA_API_KEY", "k"),
        ("CFG_TEST_PRIV", "private"),
    ])
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with(text, Path::new("t.toml"), &env())
}

const KEY: &str = "[credential]\napi_key_env = \"CFG_TEST_KEY\"\n";

#[test]
fn the_shipped_config_parses_to_the_documented_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let c = Config::load_with(&path, &env()).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_request_body, 50 << 20);
    assert_eq!(c.limits.len(), 2);
    assert_eq!(
        (c.limits[0].requests, c.limits[0].per),
        (500, Duration::from_secs(60))
    );
    assert_eq!(
        (c.limits[1].requests, c.limits[1].per),
        (10_000, Duration::from_secs(600))
    );
    assert_eq!(c.admission.margin, Duration::from_millis(250));
    assert_eq!(c.admission.on_limit, OnLimit::Queue);
    assert!(matches!(c.credential, Some(CredentialConfig::ApiKey(_))));
    assert!(matches!(
        &c.store,
        StoreConfig::Memory { state_file: Some(f) } if f.ends_with("dastra-proxy.state")
    ));
    let empty = parse("").unwrap();
    assert_eq!(
        format!("{empty}").replace(&empty.source.display().to_string(), ""),
        format!("{c}").replace(&c.source.display().to_string(), ""),
        "config.toml states exactly the built-in defaults"
    );
}

#[test]
fn unknown_keys_are_errors_with_position_and_key() {
    let err = parse(&format!("{KEY}[[limits]]\nrequests = 5\nperiod = \"1m\"\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("t.toml:"), "{msg}");
    assert!(
        msg.contains("limits.period") && msg.contains("unknown field"),
        "{msg}"
    );
}

#[test]
fn windows_that_never_bind_are_explained() {
    let c = parse(&format!(
        "{KEY}[[limits]]\nrequests = 50\nper = \"1s\"\n[[limits]]\nrequests = 200\nper = \"10s\"\n"
    ))
    .unwrap();
    let never = |c: &Config| -> Vec<String> {
        c.notes()
            .into_iter()
            .filter(|n| n.contains("can never bind"))
            .collect()
    };
    assert!(
        never(&c).is_empty(),
        "200/10s binds under 50/1s: {:?}",
        never(&c)
    );
    let c = parse(&format!(
        "{KEY}[[limits]]\nrequests = 50\nper = \"1s\"\n[[limits]]\nrequests = 500\nper = \"10s\"\n"
    ))
    .unwrap();
    assert_eq!(never(&c).len(), 1);
    assert!(never(&c)[0].contains("50 x 10 = 500"));
    assert!(
        c.warnings().iter().all(|w| !w.contains("can never bind")),
        "a note, not a warning"
    );
}

#[test]
fn cross_field_rules() {
    let e = parse("[credential]\nkind = \"passthrough\"\n[[clients]]\nname = \"a\"\nkey_sha256 = \"0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3\"\n").unwrap_err();
    assert!(e.to_string().contains("credential.kind"), "{e}");
    let e =
        parse("[credential]\napi_key_env = \"CFG_TEST_KEY\"\napi_key_file = \"/x\"\n").unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    let e = parse(&format!(
        "{KEY}[[clients]]\nname = \"a\"\nkey_sha256 = \"abc\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("clients[0].key_sha256"), "{e}");
    let e = parse(&format!(
        "{KEY}[[limits]]\nrequests = 5\nper = \"1m\"\n[[limits]]\nrequests = 6\nper = \"1m\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let e = parse(&format!("limits = []\n{KEY}")).unwrap_err();
    assert!(e.to_string().contains("at least one"), "{e}");
    let e = parse(&format!(
        "{KEY}[store]\nkind = \"redis\"\nurl = \"http://x\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("store.url"), "{e}");
    let e = parse(&format!(
        "{KEY}[store]\nkind = \"redis\"\nurl = \"redis://x\"\nreplicas = 0\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("store.replicas"), "{e}");
    let c = parse(&format!("{KEY}[store]\nkind = \"redis\"\nurl = \"redis://:pw@x:6379\"\nreplicas = 3\non_error = \"reject\"\n")).unwrap();
    assert!(matches!(
        c.store,
        StoreConfig::Redis {
            replicas: 3,
            on_error: StoreOnError::Reject,
            ..
        }
    ));
    assert!(
        !format!("{c}").contains(":pw@"),
        "check redacts the Redis password"
    );
    let e = parse(&format!("{KEY}[store]\nurl = \"redis://x\"\n")).unwrap_err();
    assert!(e.to_string().contains("store.url"), "{e}");
    let e = parse(&format!(
        "{KEY}[server]\nmax_request_body = \"5 bananas\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("server.max_request_body"), "{e}");
}

#[test]
fn client_rates_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pub");
    std::fs::write(&f, "public\n").unwrap();
    let c = parse(&format!(
        "[credential]\nkind = \"oauth2\"\npublic_key_file = \"{}\"\nprivate_key_env = \"CFG_TEST_PRIV\"\n\
         [[clients]]\nname = \"crm\"\nkey_sha256 = \"0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3\"\nrate = \"20/s\"\nburst = 40\n",
        f.display()
    ))
    .unwrap();
    let r = c.clients[0].rate.unwrap();
    assert_eq!(
        (r.count, r.period, r.burst),
        (20, Duration::from_secs(1), 40)
    );
    let CredentialConfig::OAuth2 {
        public,
        scope,
        token_url,
        ..
    } = c.credential.as_ref().expect("a [credential]")
    else {
        panic!()
    };
    assert_eq!(public.expose(), "public");
    assert_eq!(scope, "api1");
    assert_eq!(
        token_url.to_string(),
        "https://account.dastra.eu/connect/token"
    );
    assert!(!format!("{c}").contains("private") || !format!("{c}").contains("\"private\""));
    assert!(
        !format!("{c:?}").contains("public\""),
        "Debug never shows a secret value"
    );
}

#[test]
fn risky_set_ups_are_warned_about() {
    let warned = |text: &str, needle: &str| {
        let c = parse(&format!("{KEY}{text}")).unwrap();
        c.warnings().iter().any(|w| w.contains(needle))
    };
    assert!(warned(
        "[upstream]\nurl = \"http://api.test\"\n",
        "plain http"
    ));
    assert!(!warned("", "plain http"), "the default upstream is https");
    assert!(warned(
        "[access]\nallow = [\"0.0.0.0/0\"]\n",
        "admits every address"
    ));
    assert!(warned(
        "[access]\ntrusted_proxies = [\"::/0\"]\n",
        "trusts every address"
    ));
    let client = "[[clients]]\nname = \"a\"\nkey_sha256 = \"0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3\"\n";
    assert!(warned(
        &format!("[server]\nlisten = \"0.0.0.0:8080\"\n{client}"),
        "keys over plain http"
    ));
    assert!(!warned(client, "keys over plain http"), "loopback is fine");
    assert!(
        warned(
            "[store]\nstate_file = \"\"\n",
            "a restart forgets the window"
        ),
        "restarts that forget are warned about"
    );
    let e = parse(&format!(
        "{KEY}[access]\nforwarded_header = \"x-real-ip\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("access.forwarded_header"), "{e}");
    let e = parse(&format!("{KEY}max_keys = 5\n")).unwrap_err();
    assert!(e.to_string().contains("credential.max_keys"), "{e}");
    let e = parse("[server]\nidle_timeout = \"0s\"\n").unwrap_err();
    assert!(e.to_string().contains("server.idle_timeout"), "{e}");
}

#[test]
fn more_replicas_than_a_windows_n_is_refused() {
    let redis = "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n";
    let e = parse(&format!(
        "{KEY}[[limits]]\nrequests = 2\nper = \"1s\"\n{redis}replicas = 3\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("store.replicas"), "{e}");
    assert!(parse(&format!(
        "{KEY}[[limits]]\nrequests = 3\nper = \"1s\"\n{redis}replicas = 3\n"
    ))
    .is_ok());
}

#[test]
fn the_redis_url_is_a_secret_wherever_it_comes_from() {
    let c = parse(&format!(
        "{KEY}[store]\nkind = \"redis\"\nurl_env = \"CFG_REDIS_URL\"\n"
    ))
    .unwrap();
    let StoreConfig::Redis { url, .. } = &c.store else {
        panic!("redis store expected");
    };
    assert_eq!(url.expose(), "rediss://app:s3cret-pw@redis.corp:6380");
    for shown in [format!("{c}"), format!("{c:?}")] {
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
    assert!(format!("{c}").contains("env CFG_REDIS_URL"));
    let inline = parse(&format!(
        "{KEY}[store]\nkind = \"redis\"\nurl = \"redis://app:s3cret-pw@h:6379\"\n"
    ))
    .unwrap();
    assert!(!format!("{inline:?}").contains("s3cret-pw"));
    let e = parse(&format!(
        "{KEY}[store]\nkind = \"redis\"\nurl = \"redis://h\"\nurl_env = \"CFG_REDIS_URL\"\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("one of url, url_env or url_file"),
        "{e}"
    );
    let e = parse(&format!("{KEY}[store]\nurl_env = \"CFG_REDIS_URL\"\n")).unwrap_err();
    assert!(e.to_string().contains("store.url_env"), "{e}");
}

/// A client's priority, own windows and dry run; `admission.aging`.
#[test]
fn tenancy_keys_parse_and_bad_ones_name_their_key() {
    let client = "[[clients]]\nname = \"bi\"\nkey_sha256 = \"0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3\"\n";
    let c = parse(&format!(
        "{KEY}[admission]\naging = \"3s\"\n{client}priority = \"low\"\ndry_run = true\n\
         [[clients.limits]]\nrequests = 100\nper = \"1m\"\n"
    ))
    .unwrap();
    assert_eq!(c.admission.aging, Duration::from_secs(3));
    assert_eq!((c.clients[0].priority, c.clients[0].dry_run), (2, true));
    assert_eq!(c.clients[0].limits[0].requests, 100);
    let shown = c.to_string();
    assert!(
        shown.contains("dry_run = true\npriority = \"low\"\n[[clients.limits]]\nrequests = 100"),
        "{shown}"
    );
    assert!(shown.contains("aging = \"3s\""), "{shown}");
    assert_eq!(
        parse(&format!("{KEY}{client}")).unwrap().clients[0].priority,
        1
    );
    let e = parse(&format!("{KEY}{client}priority = \"urgent\"\n")).unwrap_err();
    assert!(e.to_string().contains("clients[0].priority"), "{e}");
    let e = parse(&format!(
        "{KEY}{client}[[clients.limits]]\nrequests = 5\nper = \"soon\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("clients[0].limits[0].per"), "{e}");
}
