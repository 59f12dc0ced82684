//! `[[clients]] reserve` (SPEC §9.3): a fraction of its credential's every
//! window held for one client, however hard the others push.
//!
//! How it is kept exact: each window of N calls is split into the reserves,
//! ⌊reserve × N⌋ calls each, and a *shared rest* of N − Σ reserves. A call
//! of a client with a reserve counts against its reserve while that has room,
//! otherwise against the shared rest, where every other call counts too. So
//! the others are admitted only while the window keeps room for every unused
//! reserve, and the parts never add up to more than N. Each part is a quota
//! key of its own (memory, state file, Redis alike); the credential's own
//! key still counts every send, so Dastra's N holds whatever a reload does
//! to the parts.

use super::error::ConfigError;
use super::types::*;
use super::validate::Validator;
use super::{Config, DEFAULT_CREDENTIAL};

/// How much of a window all reserves of one credential may hold: the rest
/// is what every other client shares.
pub const MAX_RESERVED: f64 = 0.9;

/// One credential's windows as its clients' reserves split them.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The credential's name (`default` for `[credential]`).
    pub credential: String,
    /// What every call without reserve room counts against.
    pub rest: Vec<Limit>,
    /// Each reserving client and its part of every window.
    pub reserves: Vec<(String, Vec<Limit>)>,
}

/// Whether reserves summing to `sum` leave the others too little; the slack
/// absorbs the sum's rounding (0.45 + 0.45 is allowed).
fn over_max(sum: f64) -> bool {
    sum > MAX_RESERVED + 1e-9
}

/// A client's part of one window: whole calls, rounded down.
fn calls(l: &Limit, reserve: f64) -> u32 {
    (f64::from(l.requests) * reserve).floor() as u32
}

/// A client's part of each window.
fn part(limits: &[Limit], reserve: f64) -> Vec<Limit> {
    (limits.iter())
        .map(|l| Limit {
            requests: calls(l, reserve),
            ..l.clone()
        })
        .collect()
}

impl Config {
    /// Every credential whose clients hold reserves, its windows split.
    pub fn splits(&self) -> Vec<Split> {
        let mut out: Vec<Split> = Vec::new();
        for c in self.clients.iter().filter(|c| c.reserve > 0.0) {
            let name = c.credential.as_deref().unwrap_or(DEFAULT_CREDENTIAL);
            let limits = self.route_limits(c.credential.as_deref());
            let i = match out.iter().position(|s| s.credential == name) {
                Some(i) => i,
                None => {
                    out.push(Split {
                        credential: name.to_owned(),
                        rest: limits.to_vec(),
                        reserves: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            let mine = part(limits, c.reserve);
            for (rest, m) in out[i].rest.iter_mut().zip(&mine) {
                rest.requests -= m.requests;
            }
            out[i].reserves.push((c.name.clone(), mine));
        }
        out
    }

    /// The windows each client's sends are counted in (who spent the quota):
    /// its credential's and its own; without clients, every call's.
    pub fn client_windows(&self) -> Vec<(String, Vec<Limit>)> {
        if self.clients.is_empty() {
            return vec![(crate::config::ANONYMOUS.to_owned(), self.limits.clone())];
        }
        (self.clients.iter())
            .map(|c| {
                let mut w = self.route_limits(c.credential.as_deref()).to_vec();
                let own = c
                    .limits
                    .iter()
                    .filter(|l| w.iter().all(|m| m.name != l.name));
                let own: Vec<Limit> = own.cloned().collect();
                w.extend(own);
                (c.name.clone(), w)
            })
            .collect()
    }

    /// What each credential's reserves cost the others while idle, for
    /// `check`: held calls per window and what everyone else shares.
    pub(super) fn reserve_notes(&self) -> Vec<String> {
        let calls = |l: &[Limit]| {
            let n: Vec<String> = l.iter().map(|l| l.requests.to_string()).collect();
            n.join("/")
        };
        let mut out = Vec::new();
        for s in self.splits() {
            // `default` is never a [[credentials]] name: it finds [credential]'s.
            let full = self.route_limits(Some(&s.credential));
            let who: Vec<String> = (s.reserves.iter())
                .map(|(c, l)| format!("{c} {}", calls(l)))
                .collect();
            let rest: Vec<String> = (s.rest.iter().zip(full))
                .map(|(r, l)| format!("{} of {} per {}", r.requests, l.requests, l.name))
                .collect();
            out.push(format!(
                "credential `{}`: reserves hold calls of every window for {} (windows in \
                 order); while a reserve is idle its calls go unused, and everyone else \
                 shares {}",
                s.credential,
                who.join(", "),
                rest.join(", ")
            ));
        }
        out
    }

    /// The windows of the credential a client names (`None`: `[credential]`).
    fn route_limits(&self, credential: Option<&str>) -> &[Limit] {
        let named = credential.and_then(|n| self.credentials.iter().find(|k| k.name == n));
        named.map_or(&self.limits, |n| self.limits_of(n))
    }
}

impl Validator<'_> {
    /// Reserves must leave the others a rest, hold at least one call of
    /// every window, and belong to a credential the proxy holds.
    pub(super) fn reserves(
        &self,
        limits: &[Limit],
        credentials: &[NamedCredential],
        clients: &[ClientConfig],
        store: &StoreConfig,
    ) -> Result<(), ConfigError> {
        let replicas = match store {
            StoreConfig::Redis { replicas, .. } => *replicas,
            StoreConfig::Memory { .. } => 1,
        };
        let windows = |c: &ClientConfig| {
            let named =
                (c.credential.as_deref()).and_then(|n| credentials.iter().find(|k| k.name == n));
            named.and_then(|n| n.limits.as_deref()).unwrap_or(limits)
        };
        for (i, c) in clients.iter().enumerate().filter(|(_, c)| c.reserve > 0.0) {
            let key = format!("clients[{i}].reserve");
            let of = windows(c);
            if let Some(l) = (of.iter()).find(|l| calls(l, c.reserve) < replicas) {
                return Err(self.invalid(
                    &key,
                    format!(
                        "{} of window \"{}\" ({} requests) is less than {}: raise it or remove it",
                        c.reserve,
                        l.name,
                        l.requests,
                        match replicas {
                            1 => "one call".to_owned(),
                            n => format!("one call per replica ({n}), which each replica holds while Redis is down"),
                        }
                    ),
                ));
            }
            let sum: f64 = (clients.iter())
                .filter(|o| o.credential == c.credential)
                .map(|o| o.reserve)
                .sum();
            if over_max(sum) {
                let shared = of.iter().map(|l| {
                    let held: u32 = (clients.iter())
                        .filter(|o| o.credential == c.credential)
                        .map(|o| calls(l, o.reserve))
                        .sum();
                    format!(
                        "{} of {} per {}",
                        l.requests.saturating_sub(held),
                        l.requests,
                        l.name
                    )
                });
                return Err(self.invalid(
                    &key,
                    format!(
                        "the reserves of credential `{}` add up to {sum:.2}, over {MAX_RESERVED}: \
                         an idle reserve is held from everyone else, who would share only {}",
                        c.credential.as_deref().unwrap_or(DEFAULT_CREDENTIAL),
                        shared.collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, name: &str) -> Limit {
        Limit {
            requests,
            per: std::time::Duration::from_secs(60),
            name: name.to_owned(),
        }
    }

    /// Parts are whole calls rounded down, so reserves and rest add up to N
    /// and never more.
    #[test]
    fn a_reserve_is_whole_calls_rounded_down() {
        let l = [limit(500, "1m"), limit(10_000, "10m"), limit(7, "x")];
        let p = part(&l, 0.3);
        let got: Vec<u32> = p.iter().map(|l| l.requests).collect();
        assert_eq!(got, [150, 3000, 2]);
        assert!(p
            .iter()
            .zip(&l)
            .all(|(p, l)| p.name == l.name && p.per == l.per));
    }

    const DIGESTS: [&str; 3] = [
        "0131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3",
        "1131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3",
        "2131254a1454a278322231df07fc65e2950e0bc532130cd0618f99719fa71dc3",
    ];

    fn parse(reserves: &[f64], extra: &str) -> Result<Config, ConfigError> {
        let env = crate::secret::SecretEnv::fixed([("DASTRA_API_KEY", "k")]);
        let mut text = format!(
            "{extra}[credential]\n[[limits]]\nrequests = 10\nper = \"1m\"\n\
             [[limits]]\nrequests = 100\nper = \"10m\"\n"
        );
        for (i, r) in reserves.iter().enumerate() {
            text += &format!(
                "[[clients]]\nname = \"c{i}\"\nkey_sha256 = \"{}\"\nreserve = {r}\n",
                DIGESTS[i]
            );
        }
        Config::parse_with(&text, std::path::Path::new("t.toml"), &env)
    }

    #[test]
    fn reserves_split_each_window_and_leave_the_rest_to_share() {
        let c = parse(&[0.3, 0.0, 0.2], "").unwrap();
        let s = c.splits();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].credential, "default");
        let n = |l: &[Limit]| l.iter().map(|l| l.requests).collect::<Vec<_>>();
        assert_eq!(n(&s[0].rest), [5, 50]);
        let names: Vec<&str> = s[0].reserves.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c0", "c2"]);
        assert_eq!(n(&s[0].reserves[0].1), [3, 30]);
        assert_eq!(n(&s[0].reserves[1].1), [2, 20]);
        assert!(c.to_string().contains("reserve = 0.3"), "check prints it");
        let notes = c.notes();
        let note = notes.iter().find(|n| n.contains("reserves hold")).unwrap();
        assert!(note.contains("c0 3/30, c2 2/20"), "{note}");
        assert!(
            note.contains("everyone else shares 5 of 10 per 1m, 50 of 100 per 10m"),
            "{note}"
        );
        assert!(parse(&[0.0], "").unwrap().splits().is_empty());
    }

    #[test]
    fn check_refuses_reserves_that_leave_too_little() {
        let err = |r: &[f64], extra: &str| parse(r, extra).unwrap_err().to_string();
        let e = err(&[0.5, 0.5], "");
        assert!(e.contains("clients[0].reserve"), "{e}");
        assert!(e.contains("add up to 1.00, over 0.9"), "{e}");
        assert!(
            e.contains("share only 0 of 10 per 1m, 0 of 100 per 10m"),
            "{e}"
        );
        assert!(parse(&[0.45, 0.45], "").is_ok(), "0.9 is allowed");
        assert!(parse(&[0.1], "").is_ok(), "one call of 10 is a reserve");
        let e = err(&[0.05], "");
        assert!(
            e.contains("clients[0].reserve") && e.contains("less than one call"),
            "{e}"
        );
        let e = err(&[1.5], "");
        assert!(e.contains("not a fraction between 0 and 0.9"), "{e}");
        let e = err(&[-0.1], "");
        assert!(e.contains("clients[0].reserve"), "{e}");
        let redis = "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nreplicas = 4\n";
        let e = err(&[0.3], redis);
        assert!(e.contains("one call per replica (4)"), "{e}");
    }

    /// A client routed to a named credential: its reserve splits that
    /// credential's windows, `check` judges it against them, and its sends
    /// are counted in them and in its own (each window once).
    #[test]
    fn a_named_credentials_windows_are_the_ones_split_and_counted() {
        let env = crate::secret::SecretEnv::fixed([("DASTRA_API_KEY", "k"), ("HR", "h")]);
        let text = |reserve: &str, own: &str| {
            format!(
                "[credential]\n[[credentials]]\nname = \"hr\"\napi_key_env = \"HR\"\n\
                 [[credentials.limits]]\nrequests = 20\nper = \"1m\"\n\
                 [[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\ncredential = \"hr\"\n\
                 reserve = {reserve}\n{own}\
                 [[clients]]\nname = \"b\"\nkey_sha256 = \"{}\"\n",
                DIGESTS[0], DIGESTS[1]
            )
        };
        let parse = |t: &str| Config::parse_with(t, std::path::Path::new("t.toml"), &env);
        let own = "[[clients.limits]]\nrequests = 3\nper = \"1m\"\n\
                   [[clients.limits]]\nrequests = 5\nper = \"10s\"\n";
        let c = parse(&text("0.25", own)).unwrap();
        let s = c.splits();
        assert_eq!((s.len(), s[0].credential.as_str()), (1, "hr"));
        assert_eq!(
            (s[0].rest[0].requests, s[0].reserves[0].1[0].requests),
            (15, 5)
        );
        let w = c.client_windows();
        let names = |i: usize| -> Vec<(&str, u32)> {
            w[i].1
                .iter()
                .map(|l| (l.name.as_str(), l.requests))
                .collect()
        };
        assert_eq!(
            (w[0].0.as_str(), names(0)),
            ("a", vec![("1m", 20), ("10s", 5)])
        );
        assert_eq!(
            (w[1].0.as_str(), names(1)),
            ("b", vec![("1m", 500), ("10m", 10000)]),
            "the default credential's"
        );
        // 0.04 of hr's 20 is under one call, though of the default's 500 it is not.
        let e = parse(&text("0.04", "")).unwrap_err().to_string();
        assert!(
            e.contains("clients[0].reserve") && e.contains("(20 requests)"),
            "{e}"
        );
        // Without clients, every call's windows are the default credential's.
        let c = Config::parse_with("[credential]\n", std::path::Path::new("t.toml"), &env).unwrap();
        let w = c.client_windows();
        assert_eq!(
            (w.len(), w[0].0.as_str(), w[0].1.len()),
            (1, "anonymous", 2)
        );
    }
}
