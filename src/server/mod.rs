//! Listeners: accept loops for the proxy and admin ports, optional inbound
//! TLS, and graceful shutdown.
//!
//! On shutdown the listeners close first; connections finish their in-flight
//! and queued calls up to `server.shutdown_grace`; then whatever still waits
//! for quota is answered `503 shutting_down` rather than dropped.

mod accept;
mod drain;
mod service;
mod sniff;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::app::{App, AppError};
use crate::config::{Config, TlsFiles};
use crate::metrics::Metrics;
use crate::proxy;
use crate::store::StoreError;
use accept::{accept_loop, with_conn, ConnPolicy};

/// What keeps the proxy from starting, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("`{key}` {}: {message}", path.display())]
    Tls {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    App(#[from] AppError),
}

/// A started proxy: its bound addresses and the handle to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    /// The inbound TLS pair in use, swapped whole by [`Running::reload_tls`].
    tls: Option<Arc<arc_swap::ArcSwap<TlsAcceptor>>>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("proxy_addr", &self.proxy_addr)
            .field("admin_addr", &self.admin_addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Reads the inbound TLS certificate and key again (SIGHUP): new
    /// connections get the new pair, open ones keep theirs. A pair that does
    /// not load leaves the old one in place and says why. `Ok(false)` without
    /// inbound TLS.
    pub fn reload_tls(&self) -> Result<bool, StartError> {
        let (Some(current), Some(files)) = (&self.tls, &self.app.config.server.tls) else {
            return Ok(false);
        };
        let (acceptor, expires) = tls_acceptor(files)?;
        current.store(Arc::new(acceptor));
        cert_expiry(&self.app.metrics, expires);
        Ok(true)
    }

    /// Stops accepting, drains, and returns once everything is answered.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Loads every file the config names beyond the secrets (inbound TLS pair,
/// `upstream.ca_file`), so `check` finds what start-up would trip on.
pub fn preflight(config: &Config) -> Result<(), StartError> {
    if let Some(t) = &config.server.tls {
        tls_acceptor(t)?;
    }
    crate::upstream::build_client(
        config.upstream.ca_file.as_deref(),
        config.upstream.connect_timeout,
    )
    .map_err(AppError::from)?;
    Ok(())
}

/// Binds both listeners and serves until shut down.
pub async fn start(config: Config, metrics: Metrics) -> Result<Running, StartError> {
    let tls = config
        .server
        .tls
        .as_ref()
        .map(tls_acceptor)
        .transpose()?
        .map(|(a, expires)| {
            cert_expiry(&metrics, expires);
            Arc::new(arc_swap::ArcSwap::from_pointee(a))
        });
    let bind = |addr: SocketAddr, what: &'static str| {
        let err = |source| StartError::Bind { addr, what, source };
        let listener = listen(addr).map_err(err)?;
        let bound = listener.local_addr().map_err(err)?;
        Ok::<_, StartError>((listener, bound))
    };
    let (proxy_listener, proxy_addr) = bind(config.server.listen, "server.listen")?;
    let (admin_listener, admin_addr) = bind(config.server.admin_listen, "server.admin_listen")?;
    let grace = config.server.shutdown_grace;
    // A setting that can never work (password, TLS) stops the start; an
    // unreachable Redis does not: the replica holds its share until it answers.
    match crate::app::probe_store(&config).await {
        Err(AppError::Store(e @ StoreError::Config(_))) => return Err(AppError::Store(e).into()),
        Err(e) => {
            tracing::warn!(error = %e, "quota store unreachable at start; holding this replica's share until it answers")
        }
        Ok(()) => {}
    }
    let app = App::new(config, metrics)?;
    let (stop, stop_rx) = watch::channel(false);
    // The admin listener outlives the drain, so probes read /readyz's 503
    // (not a refused connection) until the process is about to exit.
    let (admin_stop, admin_stop_rx) = watch::channel(false);

    // The proxy stack is served straight from hyper: through axum's Router
    // (fallback_service) the proxied path measured slower (README, design notes).
    let stack = proxy::stack(app.clone());
    // Ready before either accept loop runs: the first probe served must not
    // race this store (the listeners already queue connections).
    app.ready.store(true, Ordering::SeqCst);
    let proxy_task = tokio::spawn(accept_loop(
        proxy_listener,
        tls.clone(),
        ConnPolicy::new(&app.config, &app.metrics),
        stop_rx.clone(),
        move |conn| with_conn(stack.clone(), conn),
    ));
    let admin = crate::admin::guarded(app.clone());
    let admin_task = tokio::spawn(accept_loop(
        admin_listener,
        None,
        ConnPolicy::new(&app.config, &app.metrics),
        admin_stop_rx,
        move |conn| with_conn(admin.clone(), conn),
    ));
    tracing::info!(%proxy_addr, %admin_addr, upstream = %app.config.upstream.origin(), "dastra-proxy listening");

    let app2 = app.clone();
    let done = tokio::spawn(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
        app2.ready.store(false, Ordering::SeqCst);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining in-flight and queued calls"
        );
        let deadline = tokio::time::Instant::now() + grace;
        let proxy_drain = proxy_task.await.ok();
        let drain = async {
            if let Some(d) = proxy_drain {
                d.shutdown().await;
            }
        };
        tokio::pin!(drain);
        if tokio::time::timeout_at(deadline, &mut drain).await.is_err() {
            // What could not go in time is answered, not dropped.
            app2.quotas.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut drain).await;
        }
        // The drained calls' spans reach the collector before the process ends.
        let _ = tokio::time::timeout(Duration::from_secs(2), app2.tracer.flush()).await;
        let _ = admin_stop.send(true);
        if let Ok(d) = admin_task.await {
            let _ = tokio::time::timeout(Duration::from_secs(1), d.shutdown()).await;
        }
        tracing::info!("shut down");
    });
    Ok(Running {
        proxy_addr,
        admin_addr,
        tls,
        app,
        stop,
        done,
    })
}

/// A listener with a backlog for bursts: tokio's default of 1024 drops SYNs
/// when thousands of callers connect at once, and they then wait a second for
/// the retransmit.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// `tls_cert_expiry_timestamp_seconds` for the pair now in use.
fn cert_expiry(metrics: &Metrics, expires: Option<i64>) {
    let g = metrics
        .tls_cert_expiry_timestamp_seconds
        .with_label_values(&["proxy"]);
    match expires {
        Some(t) => g.set(t),
        None => tracing::warn!("the inbound TLS certificate's expiry could not be read"),
    }
}

/// When a DER certificate stops being valid, in Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::FromDer as _;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// The acceptor for the pair, and when its (first, leaf) certificate expires.
fn tls_acceptor(files: &TlsFiles) -> Result<(TlsAcceptor, Option<i64>), StartError> {
    let err = |path: &PathBuf, message: String| StartError::Tls {
        key: if *path == files.key_file {
            "server.tls.key_file"
        } else {
            "server.tls.cert_file"
        },
        path: std::path::absolute(path).unwrap_or_else(|_| path.clone()),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| err(&files.cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(&files.cert_file, "holds no PEM certificate".into()));
    }
    let expires = not_after(&certs[0]);
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| err(&files.key_file, e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::upstream::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&files.cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(
                &files.key_file,
                format!("certificate and key do not form a usable pair: {e}"),
            )
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(cfg)), expires))
}
