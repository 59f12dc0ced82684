//! Config mistakes as the operator meets them: the real binary's `check` and
//! `run` over a table of broken files. Each message is pinned (file, line,
//! column, key, words), and `run` must fail with the very same message before
//! binding anything.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

const KEY: &str = "[credential]\napi_key_env = \"TEST_DASTRA_KEY\"\n";

struct Outcome {
    code: i32,
    stderr: String,
}

fn dastra_proxy(args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    in_dir(&dir, args, config, env)
}

fn in_dir(dir: &tempfile::TempDir, args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"));
    cmd.current_dir(dir.path())
        .args(args)
        .arg("--config")
        .arg("config.toml")
        .env("TEST_DASTRA_KEY", "k-0123456789")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`{args:?}` did not stop on a broken config:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `error:` line (run may log before failing; check prints notes).
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

/// A config body, the environment it runs with, the error line expected.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn each_mistake_is_named_by_file_line_column_and_key_and_run_agrees_with_check() {
    let cases: &[Case] = &[
        (
            "[admision]\non_limit = \"queue\"\n",
            &[],
            "error: config.toml:1:2: unknown field `admision`, expected one of",
        ),
        (
            "[[limits]]\nrequests = 0\nper = \"1m\"\n",
            &[],
            "error: config.toml:2:12: `limits[0].requests`: must be between 1 and 10000000",
        ),
        (
            "[admission]\non_limit = \"wait\"\n",
            &[],
            "error: config.toml:2:12: `admission.on_limit`:",
        ),
        (
            "[upstream]\nurl = \"ftp://x\"\n",
            &[],
            "error: config.toml:2:7: `upstream.url`: `ftp://x` needs an https:// (or http://) scheme and a host",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3\"\nrate = \"5 per sec\"\n",
            &[],
            "error: config.toml:4:8: `clients[0].rate`: `5 per sec` is not a rate such as \"20/s\"",
        ),
        (
            "[access]\nallow = [\"127.0.0.1\", \"10.1.2.3/8\"]\n",
            &[],
            "error: config.toml:2:23: `access.allow[1]`: \"10.1.2.3/8\" has host bits set: write \"10.0.0.0/8\" for the whole network, or \"10.1.2.3/32\" for the one address",
        ),
        (
            "[access]\ntrusted_proxies = [\"nope\"]\n",
            &[],
            "error: config.toml:2:20: `access.trusted_proxies[0]`: \"nope\" is neither an address nor a network like \"10.0.0.0/8\"",
        ),
        (
            "[admission]\nmax_wait = 5\n",
            &[],
            "error: config.toml:2:12: `admission.max_wait`: invalid type: number `5`, expected a duration in a string, like \"30s\"",
        ),
        (
            "[[limits]]\nrequests = \"many\"\nper = \"1m\"\n",
            &[],
            "error: config.toml:2:12: `limits.requests`: invalid type: string \"many\", expected a whole number, like 100",
        ),
        (
            "[server]\nwatch = \"yes\"\n",
            &[],
            "error: config.toml:2:9: `server.watch`: invalid type: string \"yes\", expected true or false",
        ),
        (
            // sha256("hello"), as 0.2's example shipped it.
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"\n",
            &[],
            "error: config.toml:3:14: `clients[0].key_sha256`: is the digest of the well-known key \"hello\": anyone can guess it; make one with `dastra-proxy gen-key`",
        ),
        (
            "[admission]\nmax_queue = 10\n",
            &[("DASTRA_PROXY__ADMISSION__MAX_QUEUE", "-1")],
            "error: config.toml: `admission.max_queue` (from DASTRA_PROXY__ADMISSION__MAX_QUEUE): must be between 0 and 1000000",
        ),
        (
            "[server]\ntls = { cert_file = \"missing.crt\", key_file = \"missing.key\" }\n",
            &[],
            "error: config.toml: `server.tls.cert_file` /",
        ),
    ];
    for (body, env, expected) in cases {
        let config = format!("{body}{KEY}");
        let dir = tempfile::tempdir().unwrap();
        let check = in_dir(&dir, &["check", "--offline"], &config, env);
        let run = in_dir(&dir, &["run"], &config, env);
        assert_eq!(
            check.code, 1,
            "check must refuse:\n{config}\n{}",
            check.stderr
        );
        let line = error_line(&check.stderr);
        assert!(
            line.starts_with(expected),
            "for\n{config}\nexpected  {expected}\ngot       {line}"
        );
        assert!(!line.contains("i64"), "Rust type names leak: {line}");
        assert_eq!(run.code, check.code, "run and check disagree on\n{config}");
        assert_eq!(
            error_line(&run.stderr),
            line,
            "run and check say different things"
        );
    }
}

#[test]
fn a_bare_address_means_itself_alone_and_a_secret_is_named_where_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!("{KEY}[access]\nallow = [\"10.1.2.3\", \"::1\"]\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .env("TEST_DASTRA_KEY", "k-0123456789")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("allow = [\"10.1.2.3/32\", \"::1/128\"]"),
        "{shown}"
    );
    let missing = dastra_proxy(
        &["check", "--offline"],
        "[server]\nlisten = \"127.0.0.1:0\"\n[credential]\nkind = \"api_key\"\napi_key_env = \"DP_SURELY_UNSET_VAR\"\n",
        &[],
    );
    assert_eq!(
        error_line(&missing.stderr),
        "error: config.toml:5:15: `credential.api_key`: environment variable DP_SURELY_UNSET_VAR is not set"
    );
}

#[test]
fn check_warns_when_a_listener_faces_the_network_but_only_loopback_may_call() {
    let out = dastra_proxy(
        &["check", "--offline"],
        &format!("{KEY}[server]\nlisten = \"0.0.0.0:8080\"\n"),
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "warning: server.listen = \"0.0.0.0:8080\" listens beyond this host, but access.allow admits only loopback"
        ),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("server.admin_listen ="),
        "{}",
        out.stderr
    );
}
