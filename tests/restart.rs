//! Restarts keep the quota (memory store, `store.state_file`): judged on the
//! upstream's own arrival log, through the real binary, across SIGTERM and
//! `kill -9`; one process per file; a corrupt file stops start-up and `check`.

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

const LIMIT: &str =
    "[[limits]]\nrequests = 10\nper = \"20s\"\n[admission]\non_limit = \"reject\"\n";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
}

/// Sends `n` calls one after another; returns their statuses.
async fn burst(proxy: &BinProxy, n: usize) -> Vec<u16> {
    let c = client();
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            get(&c, &proxy.url(&format!("/v1/burst/{i}")))
                .await
                .status
                .as_u16(),
        );
    }
    out
}

async fn exit_code(mut proxy: BinProxy) -> Option<i32> {
    tokio::task::spawn_blocking(move || proxy.child.wait().unwrap().code())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_survives_a_graceful_restart_and_kill_9() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();

    let proxy = BinProxy::start(dir.path(), &up, LIMIT);
    assert_eq!(burst(&proxy, 10).await, vec![200; 10]);
    proxy.signal("TERM");
    assert_eq!(exit_code(proxy).await, Some(0));

    let proxy = BinProxy::start(dir.path(), &up, LIMIT);
    let statuses = burst(&proxy, 10).await;
    assert_eq!(
        statuses,
        vec![429; 10],
        "a graceful restart forgot the window"
    );
    let r = get(&client(), &proxy.url("/v1/after-restart")).await;
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=21).contains(&wait),
        "Retry-After {wait} from the restored window"
    );
    drop(proxy); // SIGKILL: no chance to write anything on the way out

    let proxy = BinProxy::start(dir.path(), &up, LIMIT);
    assert_eq!(
        burst(&proxy, 10).await,
        vec![429; 10],
        "kill -9 forgot the window"
    );
    assert_eq!(
        up.arrivals("/v1/").len(),
        10,
        "Dastra saw more than one window's worth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_kill_9_still_counts() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let limit = "[[limits]]\nrequests = 3\nper = \"20s\"\n[admission]\non_limit = \"reject\"\n";
    let proxy = BinProxy::start(dir.path(), &up, limit);
    assert_eq!(burst(&proxy, 2).await, vec![200, 200]);
    let c = client();
    let url = proxy.url("/slow/5000");
    let slow = tokio::spawn(async move { get(&c, &url).await });
    for _ in 0..300 {
        if up.state.in_flight.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.state.in_flight.load(Ordering::SeqCst), 1);
    drop(proxy);
    let _ = slow.await;

    let proxy = BinProxy::start(dir.path(), &up, limit);
    let r = get(&client(), &proxy.url("/v1/after")).await;
    assert_eq!(r.status, 429, "the unanswered send was forgotten");
    assert_eq!(r.code(), "quota_exhausted");
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_file_refuses_naming_the_holder() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = BinProxy::start(dir.path(), &up, LIMIT);
    let text = std::fs::read_to_string(dir.path().join("config.toml"))
        .unwrap()
        .replace(&first.proxy.to_string(), &free_port().to_string())
        .replace(&first.admin.to_string(), &free_port().to_string());
    let second = dir.path().join("second.toml");
    std::fs::write(&second, text).unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&second)
        .env("TEST_DASTRA_KEY", DASTRA_KEY)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..500 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("a second process started on a state file already in use");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "names the holder: {stderr}"
    );
    assert_eq!(
        burst(&first, 1).await,
        vec![200],
        "the first one is unharmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_start_up_and_check_naming_file_and_offset() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, LIMIT);
    assert_eq!(burst(&proxy, 1).await, vec![200]);
    drop(proxy);
    let state = dir.path().join("dastra-proxy.state");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&state, &bytes).unwrap();

    let config = dir.path().join("config.toml");
    for args in [vec!["check", "--config"], vec!["run", "--config"]] {
        let out = bin()
            .args(&args)
            .arg(&config)
            .env("TEST_DASTRA_KEY", DASTRA_KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&state.display().to_string()) && stderr.contains("offset"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_restarts_forget_the_window() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up, "[store]\nstate_file = \"\"\n");
    let out = bin()
        .args(["check", "--config"])
        .arg(&config)
        .env("TEST_DASTRA_KEY", DASTRA_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: store.state_file = \"\""),
        "{stderr}"
    );
    assert!(stderr.contains("k quotas"), "{stderr}");
}
