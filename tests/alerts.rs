//! The shipped Prometheus alert rules are valid, and each fires (and only
//! then) on the series its `promtool test rules` case gives it.

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards"))
        .output()
        .expect("promtool is installed (scripts/test installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_tests() {
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS: 11 rules found"));
    promtool(&["test", "rules", "alerts.test.yml"]);
}

/// Every alert names a runbook section, and the README has it.
#[test]
fn every_alert_has_its_runbook_in_the_readme() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/dashboards/alerts.yml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 11);
    for a in alerts {
        assert!(
            rules.contains(&format!("README.md#{}", a.to_lowercase())),
            "{a}: no runbook link"
        );
        assert!(
            readme.contains(&format!("#### {a}")),
            "{a}: no runbook in the README"
        );
    }
}
