//! `[[credentials]]` and the clients that route to them (SPEC §9.3b):
//! what `check` refuses, warns about and prints.

use std::path::Path;

use super::*;

fn env() -> SecretEnv {
    SecretEnv::fixed([
        ("DASTRA_API_KEY", "default-key"),
        ("HR_KEY", "hr-key"),
        ("CRM_KEY", "crm-key"),
        ("SAME_AS_HR", "hr-key"),
    ])
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with(text, Path::new("t.toml"), &env())
}

const DIGEST: &str = "0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3";
const DIGEST2: &str = "1131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3";

fn hr(extra: &str) -> String {
    format!("[[credentials]]\nname = \"hr\"\napi_key_env = \"HR_KEY\"\n{extra}")
}

fn client(name: &str, digest: &str, credential: Option<&str>) -> String {
    let route = credential.map_or(String::new(), |c| format!("credential = \"{c}\"\n"));
    format!("[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{digest}\"\n{route}")
}

#[test]
fn named_credentials_with_their_own_limits_and_a_client_routed_to_each() {
    let text = format!(
        "[credential]\n{}[[credentials.limits]]\nrequests = 3\nper = \"10s\"\n\
         [[credentials]]\nname = \"crm\"\napi_key_env = \"CRM_KEY\"\n{}{}",
        hr(""),
        client("a", DIGEST, Some("hr")),
        client("b", DIGEST2, None)
    );
    let c = parse(&text).unwrap();
    assert!(
        matches!(c.credential, Some(CredentialConfig::ApiKey(_))),
        "the default stays"
    );
    assert_eq!(c.credentials.len(), 2);
    assert_eq!(c.credentials[0].name, "hr");
    assert_eq!(c.limits_of(&c.credentials[0])[0].requests, 3);
    assert_eq!(
        c.limits_of(&c.credentials[1]),
        &c.limits[..],
        "crm: the top-level windows"
    );
    assert_eq!(c.clients[0].credential.as_deref(), Some("hr"));
    assert_eq!(c.clients[1].credential, None);
    let shown = c.to_string();
    assert!(
        shown.contains(
            "[[credentials]]\nname = \"hr\"\nkind = \"api_key\"\napi_key = \"<redacted from env HR_KEY>\""
        ),
        "{shown}"
    );
    assert!(
        shown.contains("[[credentials.limits]]\nrequests = 3\nper = \"10s\""),
        "{shown}"
    );
    assert!(shown.contains("credential = \"hr\""), "{shown}");
    assert!(
        !shown.contains("hr-key") && !shown.contains("crm-key"),
        "no secret printed: {shown}"
    );
}

#[test]
fn check_refuses_unknown_duplicate_reserved_and_passthrough_credentials() {
    let refused = |text: String, key: &str| {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{key} not named in: {e}");
        e
    };
    let e = refused(
        format!("{}{}", hr(""), client("a", DIGEST, Some("crm"))),
        "clients[0].credential",
    );
    assert!(e.contains("`crm`"), "{e}");
    refused(format!("{}{}", hr(""), hr("")), "credentials[1].name");
    refused(
        "[[credentials]]\nname = \"default\"\napi_key_env = \"HR_KEY\"\n".into(),
        "credentials[0].name",
    );
    refused(
        "[[credentials]]\napi_key_env = \"HR_KEY\"\n".into(),
        "credentials[0].name",
    );
    refused(
        "[[credentials]]\nname = \"a b\"\napi_key_env = \"HR_KEY\"\n".into(),
        "credentials[0].name",
    );
    refused(
        "[[credentials]]\nname = \"p\"\nkind = \"passthrough\"\n".into(),
        "credentials[0].kind",
    );
    refused(
        format!("[credential]\nkind = \"passthrough\"\n{}", hr("")),
        "credential.kind",
    );
    refused(
        format!("[credential]\nname = \"x\"\n{}", hr("")),
        "credential.name",
    );
    refused(
        hr("token_url = \"https://t\"\n"),
        "credentials[0].token_url",
    );
    refused(
        hr("[[credentials.limits]]\nrequests = 0\nper = \"1s\"\n"),
        "credentials[0].limits[0].requests",
    );
    // Only named credentials: every caller must be a client naming one.
    refused(hr(""), "credential");
    let e = refused(
        format!("{}{}", hr(""), client("a", DIGEST, None)),
        "clients[0].credential",
    );
    assert!(e.contains("no [credential]"), "{e}");
    assert!(
        parse(&format!("{}{}", hr(""), client("a", DIGEST, Some("hr"))))
            .is_ok_and(|c| c.credential.is_none())
    );
}

#[test]
fn check_warns_when_two_credentials_hold_the_same_key() {
    let text = format!(
        "{}[[credentials]]\nname = \"again\"\napi_key_env = \"SAME_AS_HR\"\n{}",
        hr(""),
        client("a", DIGEST, Some("hr"))
    );
    let w = parse(&text).unwrap().warnings();
    let same: Vec<_> = w.iter().filter(|w| w.contains("same Dastra key")).collect();
    assert_eq!(same.len(), 1, "{w:?}");
    assert!(
        same[0].contains("credentials[0] and credentials[1]"),
        "{w:?}"
    );
    assert!(
        !same[0].contains("hr-key"),
        "the key itself is never printed"
    );
    let apart = format!("{}{}", hr(""), client("a", DIGEST, Some("hr")));
    assert!(!parse(&apart)
        .unwrap()
        .warnings()
        .iter()
        .any(|w| w.contains("same Dastra key")));
}

/// The state file holds every credential's whole window: its ring is the
/// sum of each credential's largest window, not the largest alone.
#[test]
fn the_state_file_ring_holds_every_credentials_window() {
    let text = format!(
        "[credential]\n{}[[credentials.limits]]\nrequests = 20000\nper = \"1h\"\n\
         [[credentials]]\nname = \"crm\"\napi_key_env = \"CRM_KEY\"\n{}",
        hr(""),
        client("a", DIGEST, Some("hr"))
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.state_slots(), 10_000 + 20_000 + 10_000);
}
