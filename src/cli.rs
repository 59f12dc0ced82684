//! The command line of SPEC §2.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dastra-proxy",
    version,
    about = "A quota-exact reverse proxy for the Dastra API"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "DASTRA_PROXY_CONFIG",
        default_value = "config.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and print the effective settings, secrets
    /// redacted; fails exactly when `run` would at start-up.
    Check {
        /// Skip what needs the network (connecting to Redis), and say so.
        #[arg(long)]
        offline: bool,
    },
    /// Read a client key on stdin and print its SHA-256 for `clients.key_sha256`.
    HashKey,
    /// Print a new random client key and its SHA-256.
    GenKey,
    /// GET the admin /readyz; exit 0 when ready (for Docker HEALTHCHECK).
    Healthcheck {
        /// Defaults to http://<server.admin_listen>/readyz from the config.
        #[arg(long)]
        url: Option<String>,
    },
}
