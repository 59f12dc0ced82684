//! dastra-proxy: a local reverse proxy that lets many internal applications use
//! the Dastra API without exceeding its quotas or spreading its API key.
//!
//! The request path is [`proxy`]; the quota arithmetic is [`quota`] and the
//! queueing around it [`admission`]; [`config`] is the single place settings
//! are checked; [`app`] holds what one running proxy shares between calls.
//! `main.rs` is the command line: it parses it and runs each command
//! (`run` with its signals and reloads, `check`, `healthcheck`, key tools),
//! the only place errors become `anyhow`.

pub mod access;
pub mod adapt;
pub mod admin;
pub mod admission;
pub mod app;
pub mod body;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conn;
pub mod cors;
pub mod credential;
pub mod error;
pub mod guard;
mod head;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod retry;
pub mod secret;
pub mod server;
pub mod spent;
pub mod state_file;
pub mod store;
pub mod target;
pub mod trace;
pub mod upstream;
