//! The status page as a browser shows it (SPEC §9.4): headless Chromium
//! renders the admin `/` page of the real stack, its script reads `/quota`,
//! and the header names the degraded mode the proxy is in — or "ready".

mod support;

use std::net::SocketAddr;

use axum::body::Body;
use http::Method;
use support::*;

/// The rendered header line (`#sub`) once the page's script has run.
async fn header_line(admin: SocketAddr) -> String {
    let dom = rendered(admin).await;
    let start = dom
        .find("id=\"sub\"")
        .unwrap_or_else(|| panic!("no header in {dom}"));
    let text = &dom[start..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find("</div>").unwrap()].to_owned()
}

/// The page's DOM once its script has run.
async fn rendered(admin: SocketAddr) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=3000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .output()
            .expect("chromium runs (scripts/test installs it)")
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Several Dastra credentials: the windows card shows each one's own
/// windows under its name, and which one Dastra paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_has_its_windows_on_the_page() {
    let up = MockUpstream::start().await;
    let digest = |k: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(k.as_bytes()));
    let extra = format!(
        "[[credentials]]\nname = \"hr\"\napi_key_env = \"TEST_DASTRA_PUBLIC\"\n\
         [[credentials.limits]]\nrequests = 3\nper = \"1m\"\n\
         [[clients]]\nname = \"hr-app\"\nkey_sha256 = \"{}\"\ncredential = \"hr\"\n\
         [[clients]]\nname = \"other\"\nkey_sha256 = \"{}\"\npriority = \"high\"\nreserve = 0.3\n",
        digest("hr-app-key-0000000001"),
        digest("other-key-00000000002")
    );
    let p = TestProxy::start(&up, &extra).await;
    let c = client();
    let hr = [("x-api-key", "hr-app-key-0000000001")];
    for path in ["/v1/a", "/v1/b"] {
        let r = send(&c, Method::GET, &p.url(path), &hr, Body::empty()).await;
        assert_eq!(r.status, 200);
    }
    let limited = [
        ("x-api-key", "hr-app-key-0000000001"),
        ("x-mock-answer", "status=429|retry-after=60"),
    ];
    let r = send(&c, Method::GET, &p.url("/v1/c"), &limited, Body::empty()).await;
    assert_eq!(r.status, 429);
    let dom = rendered(p.admin).await;
    let card = &dom[dom.find("id=\"windows\"").expect("the windows card")..];
    let card = &card[..card.find("id=\"chart\"").unwrap()];
    let hr_at = card
        .find("credential hr")
        .unwrap_or_else(|| panic!("{card}"));
    let default_at = card
        .find("credential default")
        .unwrap_or_else(|| panic!("{card}"));
    assert!(card[hr_at..].contains("3 / 3"), "hr's own window: {card}");
    assert!(default_at < hr_at, "the default first: {card}");
    assert!(
        card[default_at..hr_at].contains("0 / 500"),
        "the default's windows: {card}"
    );
    let paused = card.find("paused").unwrap_or_else(|| panic!("{card}"));
    assert!(paused > hr_at, "hr, not default, is paused: {card}");
    let line = header_line(p.admin).await;
    assert!(line.contains("paused by Dastra's 429 (hr)"), "{line}");
    // Who holds what: the clients table shows priorities and reserves.
    let table = &dom[dom.find("id=\"clients\"").expect("the clients card")..];
    let other = &table[table.find(">other<").unwrap_or_else(|| panic!("{table}"))..];
    let other = &other[..other.find("</tr>").unwrap()];
    assert!(other.contains(">high<"), "{other}");
    assert!(
        other.contains("1m: 0 / 150"),
        "a reserve of 0.3 of 500: {other}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_names_each_degraded_mode() {
    let up = MockUpstream::start().await;
    let c = client();

    let p = TestProxy::start(&up, "").await;
    let line = header_line(p.admin).await;
    assert!(line.contains("ready") && line.contains("up "), "{line}");
    p.shutdown().await;

    let p = TestProxy::start(&up, "[admission]\ndry_run = true\n").await;
    let line = header_line(p.admin).await;
    assert!(
        line.contains("dry run: nothing waits or is refused"),
        "{line}"
    );
    p.shutdown().await;

    // Dastra answered 429: every send is held.
    let p = TestProxy::start(&up, "").await;
    let r = send(
        &c,
        Method::GET,
        &p.url("/v1/limited"),
        &[("x-mock-answer", "status=429|retry-after=60")],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 429);
    let line = header_line(p.admin).await;
    assert!(line.contains("paused by Dastra's 429"), "{line}");
    p.shutdown().await;

    // Redis unreachable: this replica holds its share.
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\non_error = \"local\"\nreplicas = 1\n",
        free_port().port()
    );
    let p = TestProxy::start(&up, &store).await;
    assert_eq!(get(&c, &p.url("/v1/while-down")).await.status, 200);
    let line = header_line(p.admin).await;
    assert!(
        line.contains("store unreachable: holding this replica's share"),
        "{line}"
    );
    p.shutdown().await;
}
