//! Every shipped example config passes `dastra-proxy check` (which connects
//! to the example's Redis: a real one stands in for `redis.corp.example`).

mod support;

use std::process::Command;

fn check(example: &str, secrets: &std::path::Path, redis: &str) {
    let path = format!("{}/examples/{example}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("/run/secrets", &secrets.display().to_string())
        .replace("redis://redis.corp.example:6379", redis);
    let dir = tempfile::tempdir().unwrap();
    // `check` wants the state file's directory; the test's stands in.
    let text = text.replace("/var/lib/dastra-proxy", &dir.path().display().to_string());
    let cfg = dir.path().join(example);
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env("DASTRA_API_KEY", "example-key")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{example}: {stderr}");
    assert!(stderr.contains("valid"), "{stderr}");
}

#[test]
fn check_loads_the_tls_files_too() {
    let secrets = tempfile::tempdir().unwrap();
    for f in ["dastra-public", "dastra-private", "dastra-hr", "gw.key"] {
        std::fs::write(secrets.path().join(f), "placeholder\n").unwrap();
    }
    std::fs::write(secrets.path().join("gw.crt"), "not a certificate\n").unwrap();
    let text = std::fs::read_to_string(format!(
        "{}/examples/gateway.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("/run/secrets", &secrets.path().display().to_string());
    let cfg = secrets.path().join("gateway.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gw.crt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_example_passes_check() {
    let secrets = tempfile::tempdir().unwrap();
    for f in ["dastra-public", "dastra-private", "dastra-hr"] {
        std::fs::write(secrets.path().join(f), "placeholder\n").unwrap();
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["dastra-gw.corp.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(secrets.path().join("gw.crt"), cert.pem()).unwrap();
    std::fs::write(secrets.path().join("gw.key"), key.serialize_pem()).unwrap();
    let redis = support::RedisServer::start();
    for example in ["sidecar.toml", "gateway.toml", "redis.toml"] {
        check(example, secrets.path(), &redis.url());
    }
}

/// The image's own config serves as it is: every interface, the private
/// ranges allowed on both listeners, the state file on the image's volume;
/// and a key changed from the environment shows in `check` with its variable.
#[test]
fn the_container_config_listens_everywhere_and_lets_private_ranges_in() {
    let path = format!("{}/deploy/container.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("state_file = \"/var/lib/dastra-proxy/dastra-proxy.state\""));
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("dastra-proxy.state");
    let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
        .args(["check", "--config", &path])
        .env("DASTRA_API_KEY", "example-key")
        .env("DASTRA_PROXY__ADMISSION__ON_LIMIT", "reject")
        // The image's volume is not on this machine (check wants the
        // state file's directory): a directory of the test's stands in.
        .env("DASTRA_PROXY__STORE__STATE_FILE", &stand_in)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for want in [
        "listen = \"0.0.0.0:8080\"",
        "admin_listen = \"0.0.0.0:9090\"",
        "\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"fc00::/7\"",
        "on_limit = \"reject\"  # from DASTRA_PROXY__ADMISSION__ON_LIMIT",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("example-key"));
    let dockerfile =
        std::fs::read_to_string(format!("{}/Dockerfile", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(dockerfile.contains("COPY deploy/container.toml /out/config.toml"));
}
