//! The connection to Redis that every quota key shares: one multiplexed
//! connection to a single server, or a cluster connection, over TCP or TLS
//! (rustls), with an ACL user. Errors never carry the password.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};
use tokio::time::Instant;

use super::StoreError;

/// How long a reconnect waits after a failed one.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// How one store URL connects: `redis://`, `rediss://` (TLS), and the same
/// with `+cluster` (the listed nodes are seeds; the cluster is discovered).
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A live connection of either kind.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The one connection to Redis that every quota key's store shares, so
/// passthrough's many credentials do not each open their own.
pub struct RedisLink {
    client: Client,
    /// Scrubbed from every error message.
    password: Option<String>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    retry_at: Mutex<Option<Instant>>,
    pub(super) op_timeout: Duration,
    /// Counts connections made: a new one after the first means Redis may
    /// have restarted (from an older dump) or failed over (to a lagging
    /// replica), so what it holds is not trusted until written back.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisLink {
    // The clients' own Debug prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field(
                "kind",
                &match self.client {
                    Client::Single(_) => "single",
                    Client::Cluster(_) => "cluster",
                },
            )
            .finish_non_exhaustive()
    }
}

/// A store URL split into the node URLs the redis crate understands.
struct Parsed {
    nodes: Vec<String>,
    cluster: bool,
    tls: bool,
    password: Option<String>,
}

fn parse(url: &str) -> Result<Parsed, StoreError> {
    let bad = |why: &str| StoreError::Config(format!("store.url: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad("expected redis://, rediss://, redis+cluster:// or rediss+cluster://")
    })?;
    let (tls, cluster) = match scheme {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
        other => return Err(bad(&format!("unknown scheme {other:?}"))),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let password = userinfo
        .and_then(|u| u.split_once(':'))
        .map(|(_, p)| p.to_string())
        .filter(|p| !p.is_empty());
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(bad("no host"));
    }
    if hosts.len() > 1 && !cluster {
        return Err(bad(
            "several hosts need redis+cluster:// or rediss+cluster://",
        ));
    }
    let plain = if tls { "rediss" } else { "redis" };
    let nodes = hosts
        .iter()
        .map(|h| match userinfo {
            Some(u) => format!("{plain}://{u}@{h}{path}"),
            None => format!("{plain}://{h}{path}"),
        })
        .collect();
    Ok(Parsed {
        nodes,
        cluster,
        tls,
        password,
    })
}

impl RedisLink {
    /// Does not connect yet: a replica starts (and falls back) while Redis is
    /// down. `ca` (PEM) is the roots a `rediss` server is checked against.
    pub fn new(url: &str, ca: Option<Vec<u8>>) -> Result<Arc<Self>, StoreError> {
        let p = parse(url)?;
        let scrub = |e: RedisError| StoreError::Config(scrubbed(&e.to_string(), &p.password));
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: ca.clone(),
        };
        let client = if p.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(p.nodes.clone())
                .connection_timeout(Duration::from_millis(500))
                .response_timeout(Duration::from_millis(500));
            if p.tls && ca.is_some() {
                b = b.certs(certs());
            }
            Client::Cluster(b.build().map_err(scrub)?)
        } else if p.tls && ca.is_some() {
            Client::Single(
                redis::Client::build_with_tls(p.nodes[0].as_str(), certs()).map_err(scrub)?,
            )
        } else {
            Client::Single(redis::Client::open(p.nodes[0].as_str()).map_err(scrub)?)
        };
        Ok(Arc::new(Self {
            client,
            password: p.password,
            conn: tokio::sync::Mutex::new(None),
            retry_at: Mutex::new(None),
            op_timeout: Duration::from_millis(500),
            generation: Default::default(),
        }))
    }

    pub(super) async fn connection(&self) -> Result<Conn, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let now = Instant::now();
        if let Some(at) = *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) {
            if now < at {
                return Err(StoreError::Backoff(at - now));
            }
        }
        match tokio::time::timeout(self.op_timeout * 2, self.connect()).await {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(c)
            }
            // The backoff counts from the failure, not from the attempt: a
            // connect that timed out took longer than the backoff itself.
            Ok(Err(e)) => {
                *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + RECONNECT_BACKOFF);
                Err(self.error(e))
            }
            Err(_) => {
                *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + RECONNECT_BACKOFF);
                Err(StoreError::Timeout(self.op_timeout * 2))
            }
        }
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        Ok(match &self.client {
            Client::Single(c) => Conn::Single(c.get_multiplexed_async_connection().await?),
            Client::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
        })
    }

    /// Connects and pings, for `check` and start-up: a wrong password or a
    /// TLS failure is [`StoreError::Config`], an unreachable server is not.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut c = self.connection().await?;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.op_timeout, ping.query_async::<Value>(&mut c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(StoreError::Timeout(self.op_timeout)),
        }
    }

    /// A redis error as ours: without the password, and saying whether it is
    /// a setting to fix (authentication, TLS) rather than an outage.
    pub(super) fn error(&self, e: RedisError) -> StoreError {
        let msg = scrubbed(&e.to_string(), &self.password);
        let tls = e.to_string().contains("certificate") || e.to_string().contains("TLS");
        if matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig
        ) || msg.contains("WRONGPASS")
            || msg.contains("NOAUTH")
            || msg.contains("NOPERM")
            || tls
        {
            StoreError::Config(msg)
        } else {
            StoreError::Redis(msg)
        }
    }

    /// Which connection the last [`Self::connection`] handed out.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets a connection that failed; the next call reconnects.
    pub(super) async fn reset(&self) {
        *self.conn.lock().await = None;
    }
}

fn scrubbed(msg: &str, password: &Option<String>) -> String {
    match password {
        Some(p) if p.len() >= 3 => msg.replace(p.as_str(), "<redacted>"),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{parse, StoreError, RECONNECT_BACKOFF};

    #[test]
    fn urls_split_into_nodes_and_keep_the_acl_user() {
        let p = parse("rediss+cluster://app:s3cret@h1:7000,h2:7001/0").unwrap();
        assert!(p.tls && p.cluster);
        assert_eq!(
            p.nodes,
            [
                "rediss://app:s3cret@h1:7000/0",
                "rediss://app:s3cret@h2:7001/0"
            ]
        );
        assert_eq!(p.password.as_deref(), Some("s3cret"));
        let p = parse("redis://h:6379").unwrap();
        assert!(!p.tls && !p.cluster && p.password.is_none());
        assert!(parse("redis://h1:1,h2:2").is_err());
        assert!(parse("http://h").is_err());
        assert!(parse("redis://").is_err());
    }

    /// After a failed connect the link waits `RECONNECT_BACKOFF` before the
    /// next try: a flood while Redis is down costs no connects.
    #[tokio::test]
    async fn a_refused_connect_backs_off() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let link = super::RedisLink::new(&format!("redis://127.0.0.1:{port}"), None).unwrap();
        let first = link.connection().await.err().expect("nothing listens");
        assert!(!matches!(first, StoreError::Backoff(_)), "{first:?}");
        match link.connection().await {
            Err(StoreError::Backoff(d)) => assert!(d <= RECONNECT_BACKOFF, "{d:?}"),
            other => panic!("{:?}", other.map(drop)),
        }
    }

    /// A Redis that takes the connection and never answers: the connect
    /// gives up after twice the operation timeout, says so, and backs off.
    #[tokio::test(start_paused = true)]
    async fn a_silent_redis_times_the_connect_out_and_backs_off() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let link = super::RedisLink::new(&format!("redis://127.0.0.1:{port}"), None).unwrap();
        let t0 = Instant::now();
        match link.connection().await {
            Err(StoreError::Timeout(d)) => assert_eq!(d, Duration::from_secs(1)),
            other => panic!("{:?}", other.map(drop)),
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(1), "twice the op timeout");
        assert!(matches!(
            link.connection().await,
            Err(StoreError::Backoff(_))
        ));
        drop(silent);
    }

    #[test]
    fn the_password_never_reaches_a_message() {
        let out = super::scrubbed("WRONGPASS for s3cret", &Some("s3cret".into()));
        assert!(!out.contains("s3cret"), "{out}");
        // The shortest password scrubbed; a shorter one would blank out
        // every matching letter of the message, so it is left.
        let out = super::scrubbed("denied: abc", &Some("abc".into()));
        assert_eq!(out, "denied: <redacted>");
        assert_eq!(super::scrubbed("a bad day", &Some("a".into())), "a bad day");
    }

    /// Which failures are a setting to fix (`check` and start-up refuse
    /// them) and which an outage (the replica falls back and retries): each
    /// sign of a wrong password, a missing permission or TLS on its own.
    #[test]
    fn authentication_and_tls_failures_are_settings_an_outage_is_not() {
        use redis::{ErrorKind, RedisError};
        let link = super::RedisLink::new("redis://app:s3cret@127.0.0.1:1", None).unwrap();
        let response = |text: &str| {
            RedisError::from((
                ErrorKind::ResponseError,
                "An error was signalled by the server",
                text.to_string(),
            ))
        };
        for (e, why) in [
            (
                RedisError::from((ErrorKind::AuthenticationFailed, "refused")),
                "kind",
            ),
            (
                RedisError::from((ErrorKind::InvalidClientConfig, "bad url")),
                "config kind",
            ),
            (response("WRONGPASS invalid password s3cret"), "WRONGPASS"),
            (response("NOAUTH Authentication required"), "NOAUTH"),
            (response("NOPERM no permissions to run 'evalsha'"), "NOPERM"),
            (
                response("invalid peer certificate: UnknownIssuer"),
                "certificate",
            ),
            (response("TLS handshake eof"), "TLS"),
        ] {
            match link.error(e) {
                StoreError::Config(m) => assert!(!m.contains("s3cret"), "{why}: {m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(matches!(link.error(io.into()), StoreError::Redis(_)));
        assert!(matches!(
            link.error(response("LOADING dataset")),
            StoreError::Redis(_)
        ));
    }
}
