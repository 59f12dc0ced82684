//! The deployment files (SPEC §9.2) say what the proxy accepts: every config
//! they carry or build from the environment passes `dastra-proxy check
//! --offline`, and probes and scrapes reach the admin port. YAML is read with
//! Python's PyYAML (`scripts/test` installs it when missing).

use std::process::Command;

use serde_json::Value;

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// Every YAML document of a file, as JSON.
fn yaml(path: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(format!("{}/{path}", root()))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `check --offline` on `config` with `env`; its stdout.
fn check(config: &std::path::Path, env: &[(String, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
        .args(["check", "--offline", "--config"])
        .arg(config)
        .env("DASTRA_API_KEY", "deploy-test-key")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", config.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plain `name: value` variables of a container (not those from secrets).
fn plain_env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn the_gateway_manifest_runs_a_config_the_proxy_accepts_and_probes_the_admin_port() {
    let docs = yaml("deploy/kubernetes/gateway.yaml");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        kind("ConfigMap")["data"]["config.toml"].as_str().unwrap(),
    )
    .unwrap();
    let shown = check(&config, &[]);
    assert!(shown.contains("admin_listen = \"0.0.0.0:9090\""), "{shown}");
    assert!(
        shown.contains("\"10.0.0.0/8\""),
        "probes from the pod network: {shown}"
    );
    let deploy = kind("Deployment");
    let replicas = deploy["spec"]["replicas"].as_u64().unwrap();
    assert!(
        shown.contains(&format!("replicas = {replicas}")),
        "store.replicas matches: {shown}"
    );
    let pod = &deploy["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9090");
    let c = &pod["spec"]["containers"][0];
    let admin = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .unwrap();
    assert_eq!(admin["containerPort"], 9090);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        kind("PodDisruptionBudget")["spec"]["minAvailable"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(kind("Service")["spec"]["ports"][0]["targetPort"], "proxy");
}

#[test]
fn the_sidecar_manifest_narrows_the_image_config_from_the_environment() {
    let docs = yaml("deploy/kubernetes/sidecar.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    let proxy = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dastra-proxy")
        .unwrap();
    let mut env = plain_env(proxy);
    let image_config = std::path::PathBuf::from(format!("{}/deploy/container.toml", root()));
    // The image's state file is on the volume the manifest mounts...
    let state = proxy["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let text = std::fs::read_to_string(&image_config).unwrap();
    assert!(text.contains(&format!("state_file = \"{state}/dastra-proxy.state\"")));
    // ...which this machine does not have: a directory of the test's stands in.
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("dastra-proxy.state").display().to_string();
    env.push(("DASTRA_PROXY__STORE__STATE_FILE".into(), stand_in));
    let shown = check(&image_config, &env);
    assert!(
        shown.contains("listen = \"127.0.0.1:8080\"  # from DASTRA_PROXY__SERVER__LISTEN"),
        "{shown}"
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], "admin");
}

#[test]
fn the_compose_replicas_share_one_quota_and_prometheus_loads_the_alerts() {
    let doc = &yaml("deploy/compose.yaml")[0];
    let image_config = std::path::PathBuf::from(format!("{}/deploy/container.toml", root()));
    for name in ["proxy-a", "proxy-b"] {
        let env: Vec<(String, String)> = doc["services"][name]["environment"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("DASTRA_PROXY__"))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let shown = check(&image_config, &env);
        assert!(shown.contains("kind = \"redis\""), "{name}: {shown}");
        assert!(shown.contains("replicas = 2"), "{name}: {shown}");
        assert!(
            shown.contains("otlp_endpoint = \"http://jaeger:4318/v1/traces\""),
            "{name} traces to the stack's Jaeger: {shown}"
        );
    }
    assert!(doc["services"]["jaeger"]["image"].is_string());
    let prom = doc["configs"]["prometheus"]["content"].as_str().unwrap();
    assert!(prom.contains("proxy-a:9090") && prom.contains("proxy-b:9090"));
    assert!(prom.contains("rule_files: [/etc/prometheus/alerts.yml]"));
    let mounts = doc["services"]["prometheus"]["volumes"][0]
        .as_str()
        .unwrap();
    assert!(mounts.starts_with("../dashboards/alerts.yml:"));
}

/// Both manifests pass Kubernetes' own schemas, strictly (no unknown field):
/// `kubernetes-validate`, which `scripts/test` installs when missing.
#[test]
fn the_manifests_pass_the_kubernetes_schemas() {
    for file in [
        "deploy/kubernetes/gateway.yaml",
        "deploy/kubernetes/sidecar.yaml",
    ] {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(format!("{}/{file}", root()))
            .output()
            .expect("kubernetes-validate is installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Compose file passes the Compose specification's schema
/// (check-jsonschema's vendored copy, installed by `scripts/test`).
#[test]
fn the_compose_file_passes_the_compose_schema() {
    let out = Command::new("python3")
        .args([
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
        ])
        .arg(format!("{}/deploy/compose.yaml", root()))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
