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
    for f in ["dastra-public", "dastra-private", "gw.key"] {
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
    for f in ["dastra-public", "dastra-private"] {
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
