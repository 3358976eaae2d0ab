//! respite: a resilient caching sidecar for Redis.
//!
//! Follow one command through the modules:
//!
//! - [`server`]: the client listener; connection limit; one session task per client.
//! - [`session`]: per-client state; reads a round of requests, routes, writes replies in order.
//! - [`resp`]: RESP framing — zero-copy request parsing with limits, reply boundary scanning.
//! - [`command`]: the command table (data): arity, flags, keys, routing class per command.
//! - [`upstream`]: connecting to Redis, shared pipelined connections ([`upstream::mux`]),
//!   dedicated ones for stateful clients ([`upstream::dedicated`]), backoff, the probe.
//! - [`health`]: the circuit breaker (`healthy` / `degraded` / `down` / `replaying`).
//! - [`error`]: upstream failures and the one place they become RESP errors.
//! - [`store`], [`outage`], [`journal`], [`replay`], [`pubsub`]: outage mode — the local
//!   store, the commands served from it, the journal of accepted writes, the exactly-once
//!   replayer, local pub/sub.
//! - [`metrics`]: every Prometheus family.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /admin/drill`.
//! - [`config`]: TOML schema, flags, environment, validation, redaction.
//! - [`reload`]: the settings that change at run time (SIGHUP) and how they are swapped in.
//! - [`app`]: wiring and graceful shutdown.

pub mod admin;
pub mod app;
pub mod auth;
pub mod command;
pub mod config;
pub mod error;
pub mod health;
pub mod journal;
pub mod metrics;
pub mod outage;
pub mod pubsub;
pub mod reload;
pub mod replay;
pub mod resp;
pub mod server;
pub mod session;
pub mod store;
pub mod upstream;

pub use app::{run, run_with_reloads};
