//! The command line: parses it and hands each verb to the library.

use std::io::Read as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Parser as _;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use dastra_proxy::cli::{Cli, Command};
use dastra_proxy::config::{Config, StoreConfig};
use dastra_proxy::state_file::StateFile;
use dastra_proxy::{access, logging, metrics::Metrics, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Check { offline } => check(&cli.config, offline),
        Command::HashKey => hash_key(),
        Command::GenKey => gen_key(),
        Command::Healthcheck { url } => healthcheck(&cli.config, url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and those of its causes that its message does not already say.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// One thread when the process may use one CPU (a pinned sidecar, a cgroup
/// quota of one core): there the multi-thread scheduler has nothing to
/// spread work over, and the current-thread one served 16% more requests per
/// second (README, design notes).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    logging::init(&config.log);
    for w in config.warnings().into_iter().chain(fd_warning(&config)) {
        tracing::warn!("{w}");
    }
    runtime()?.block_on(async move {
        // Handlers first: a SIGHUP (or SIGTERM) arriving while the listeners
        // come up would otherwise meet the default action and kill the process.
        let signals = Signals::install()?;
        let running = server::start(config, Metrics::new())
            .await
            .with_context(|| path.display().to_string())?;
        signals.serve(&running, path).await;
        running.shutdown().await;
        Ok(())
    })
}

/// The signals the proxy answers, listened for from before it starts.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM/SIGINT; reloads on SIGHUP in between, and, with
    /// `server.watch`, when the config, TLS or secret files change.
    async fn serve(mut self, running: &server::Running, path: &std::path::Path) {
        let Self { term, int, hup } = &mut self;
        let watching = running.app.config.server.watch;
        let mut files = running.app.config.watched_files();
        let mut seen = fingerprint(path, &files);
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    if let Some(next) = reload(running, path) {
                        files = next;
                    }
                    seen = fingerprint(path, &files);
                }
                _ = tick.tick(), if watching => {
                    let now = fingerprint(path, &files);
                    if now != seen {
                        tracing::info!("a watched file changed; reloading");
                        if let Some(next) = reload(running, path) {
                            files = next;
                        }
                        seen = fingerprint(path, &files);
                    }
                }
            }
        }
    }
}

/// How often `server.watch` looks at the files.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What `server.watch` compares: each file's modification time and length
/// (a Kubernetes ConfigMap or Secret swap changes where its symlink points,
/// and so both).
fn fingerprint(
    config: &std::path::Path,
    files: &[std::path::PathBuf],
) -> Vec<Option<(std::time::SystemTime, u64)>> {
    std::iter::once(config)
        .chain(files.iter().map(|p| p.as_path()))
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// One reload, as SIGHUP asks it: counted and logged either way. On
/// success, the files the new config reads (for `server.watch`).
fn reload(running: &server::Running, path: &std::path::Path) -> Option<Vec<std::path::PathBuf>> {
    let metrics = &running.app.metrics;
    let outcome = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|next| {
            running.app.reload(&next).map_err(|e| e.to_string())?;
            // The inbound TLS pair is read again too (a rotated certificate);
            // one that does not load keeps the old.
            if running.reload_tls().map_err(|e| e.to_string())? {
                tracing::info!("inbound TLS certificate and key reloaded");
            }
            Ok(next)
        });
    match outcome {
        Ok(next) => {
            metrics
                .config_reloads_total
                .with_label_values(&["ok"])
                .inc();
            tracing::info!(config = %path.display(), "configuration reloaded");
            for w in next.warnings() {
                tracing::warn!("{w}");
            }
            Some(next.watched_files())
        }
        Err(e) => {
            metrics
                .config_reloads_total
                .with_label_values(&["error"])
                .inc();
            tracing::error!(error = %e, "reload refused; the previous configuration stays in force");
            None
        }
    }
}

fn check(path: &std::path::Path, offline: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    server::preflight(&config).with_context(|| path.display().to_string())?;
    if let StoreConfig::Memory {
        state_file: Some(state),
    } = &config.store
    {
        state_dir_writable(state)?;
    }
    if offline {
        if matches!(config.store, StoreConfig::Redis { .. }) {
            eprintln!("note: --offline: Redis was not contacted");
        }
    } else {
        runtime()?.block_on(dastra_proxy::app::probe_store(&config))?;
    }
    println!("{config}");
    let warnings = config.warnings();
    for w in warnings.iter().chain(fd_warning(&config).iter()) {
        eprintln!("warning: {w}");
    }
    for n in config.notes() {
        eprintln!("note: {n}");
    }
    if let StoreConfig::Memory {
        state_file: Some(state),
    } = &config.store
    {
        match StateFile::inspect(state)? {
            None => eprintln!(
                "note: state file {} does not exist yet; the proxy creates it",
                state.display()
            ),
            Some(s) => eprintln!(
                "note: state file {}: {} sends recorded ({} unanswered), {} slots, last opened by pid {}",
                state.display(),
                s.sends,
                s.unanswered,
                s.slots,
                s.pid
            ),
        }
    }
    eprintln!("{}: valid", path.display());
    Ok(())
}

/// `run` creates the state file in its directory: that directory must exist
/// and take a new file, or `run` would fail where `check` said "valid".
fn state_dir_writable(state: &std::path::Path) -> anyhow::Result<()> {
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let probe = dir.join(format!(".dastra-proxy-check-{}", std::process::id()));
    let ok = if state.exists() {
        // `run` opens it for writing, as here (nothing is written).
        std::fs::OpenOptions::new()
            .write(true)
            .open(state)
            .map(drop)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
    };
    ok.with_context(|| {
        format!(
            "store.state_file {}: its directory {} cannot take the file",
            state.display(),
            dir.display()
        )
    })
}

/// Each client connection costs a file descriptor, and a call in flight one
/// more upstream: a `max_connections` above this process's open-file limit
/// lets idle sockets starve real calls before the cap is reached.
fn fd_warning(config: &Config) -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    let needed = config.server.max_connections.saturating_mul(2);
    (needed > soft).then(|| {
        format!(
            "server.max_connections = {} needs up to {needed} file descriptors (client and \
             upstream side), but the open-file limit is {soft}: raise `ulimit -n` or lower \
             max_connections",
            config.server.max_connections
        )
    })
}

fn hash_key() -> anyhow::Result<()> {
    let mut key = String::new();
    std::io::stdin()
        .read_to_string(&mut key)
        .context("cannot read the key from stdin")?;
    if key.trim().is_empty() {
        bail!("no key on stdin");
    }
    println!("{}", access::hash_key(&key));
    Ok(())
}

fn gen_key() -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    println!("key        {key}");
    println!("key_sha256 {}", access::hash_key(&key));
    Ok(())
}

fn healthcheck(path: &std::path::Path, url: Option<String>) -> anyhow::Result<()> {
    let url = match url {
        Some(u) => u,
        None => {
            let admin = Config::load(path)
                .map(|c| c.server.admin_listen)
                .with_context(|| {
                    format!(
                        "cannot read the admin address from {}; pass --url",
                        path.display()
                    )
                })?;
            // Listening on every interface: ask over loopback.
            let mut admin = admin;
            if admin.ip().is_unspecified() {
                admin.set_ip(match admin {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{admin}/readyz")
        }
    };
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    runtime()?.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
            .await
            .context("timed out")?
            .context("no answer")?;
        if resp.status().is_success() {
            println!("ready");
            Ok(())
        } else {
            bail!("{url} answered {}", resp.status())
        }
    })
}
