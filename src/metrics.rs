//! Prometheus metrics: every family respite exports, registered in one place.
//!
//! Hot-path counters are resolved once (per command id and outcome) so that counting a
//! command is one atomic add, never a label lookup. Label values are bounded: command
//! names come from the command table (`other` for the rest), never from keys.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::command::{self, CommandId};

/// How a command ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with a non-error reply.
    Ok,
    /// The upstream answered with an error reply (passed through unchanged).
    Error,
    /// No answer within the timeout.
    Timeout,
    /// Not sent: the upstream is down or unreachable.
    Unavailable,
    /// Sent, then the connection broke: the outcome is unknown and the command was not retried.
    Unknown,
    /// Refused by respite itself (protocol, limits, unsupported).
    Refused,
    /// Answered by respite itself.
    Local,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Unavailable,
        Outcome::Unknown,
        Outcome::Refused,
        Outcome::Local,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::Unknown => "unknown",
            Outcome::Refused => "refused",
            Outcome::Local => "local",
        }
    }
}

/// A function that refreshes scrape-time gauges.
type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Buckets for a loopback proxy: 20µs to 5s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// All metric families.
pub struct Metrics {
    pub registry: Registry,
    commands_vec: IntCounterVec,
    commands: Vec<[OnceLock<IntCounter>; Outcome::ALL.len()]>,
    /// Client-facing latency: request read to reply written, per command.
    pub command_duration: Histogram,
    /// Upstream round trip of one batch of commands on one connection.
    pub upstream_duration: Histogram,
    pub upstream_state: IntGaugeVec,
    pub state_transitions: IntCounterVec,
    pub upstream_retries: IntCounter,
    pub upstream_timeouts: IntCounter,
    pub upstream_connects: IntCounterVec,
    pub client_connections: IntGauge,
    pub client_connections_accepted: IntCounter,
    pub client_connections_rejected: IntCounterVec,
    pub protocol_errors: IntCounter,
    pub client_disconnects: IntCounterVec,
    pub store_hits: IntCounter,
    pub store_misses: IntCounter,
    pub store_evictions: IntCounter,
    pub store_unseen_writes: IntCounter,
    pub store_entries: IntGauge,
    pub store_bytes: IntGauge,
    pub journal_entries: IntGauge,
    pub journal_bytes: IntGauge,
    pub journal_oldest_age: prometheus::Gauge,
    pub journal_appends: IntCounter,
    pub journal_replayed: IntCounter,
    pub journal_replay_errors: IntCounter,
    pub journal_fsyncs: IntCounter,
    pub journal_fsync_seconds: prometheus::Counter,
    pub journal_failed: IntGauge,
    pub outage_refused: IntCounterVec,
    /// Refreshes scrape-time gauges (store and journal sizes) just before rendering.
    refresh: parking_lot::Mutex<Option<Refresh>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let commands_vec = IntCounterVec::new(
            Opts::new("respite_commands_total", "Commands handled, by command name and outcome."),
            &["command", "outcome"],
        )
        .expect("valid metric");
        let hist = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                .expect("valid metric")
        };
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let m = Metrics {
            commands: (0..=command::other_id()).map(|_| Default::default()).collect(),
            command_duration: hist(
                "respite_command_duration_seconds",
                "Client-facing latency of a command, from its request being read to its reply being ready.",
            ),
            upstream_duration: hist(
                "respite_upstream_duration_seconds",
                "Upstream round trip of a batch of pipelined commands on one connection.",
            ),
            upstream_state: IntGaugeVec::new(
                Opts::new("respite_upstream_state", "1 for the current upstream state, 0 for the others."),
                &["state"],
            )
            .expect("valid metric"),
            state_transitions: IntCounterVec::new(
                Opts::new("respite_upstream_state_transitions_total", "Upstream state transitions."),
                &["from", "to"],
            )
            .expect("valid metric"),
            upstream_retries: IntCounter::new(
                "respite_upstream_retries_total",
                "Commands retried on a fresh upstream connection.",
            )
            .expect("valid metric"),
            upstream_timeouts: IntCounter::new("respite_upstream_timeouts_total", "Upstream requests that timed out.")
                .expect("valid metric"),
            upstream_connects: IntCounterVec::new(
                Opts::new("respite_upstream_connects_total", "Upstream connection attempts, by result."),
                &["result"],
            )
            .expect("valid metric"),
            client_connections: IntGauge::new("respite_client_connections", "Open client connections.")
                .expect("valid metric"),
            client_connections_accepted: IntCounter::new(
                "respite_client_connections_accepted_total",
                "Client connections accepted.",
            )
            .expect("valid metric"),
            client_connections_rejected: IntCounterVec::new(
                Opts::new("respite_client_connections_rejected_total", "Client connections refused, by reason."),
                &["reason"],
            )
            .expect("valid metric"),
            protocol_errors: IntCounter::new(
                "respite_client_protocol_errors_total",
                "Client connections closed for unparseable input.",
            )
            .expect("valid metric"),
            client_disconnects: IntCounterVec::new(
                Opts::new(
                    "respite_client_disconnects_total",
                    "Client connections closed by respite, by reason (idle, protocol, output_buffer, write_timeout).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            store_hits: counter("respite_store_hits_total", "Outage-mode reads answered from the local store."),
            store_misses: counter(
                "respite_store_misses_total",
                "Local store lookups of keys never seen (or too stale).",
            ),
            store_evictions: counter(
                "respite_store_evictions_total",
                "Local store entries evicted to stay within its byte bound.",
            ),
            store_unseen_writes: counter(
                "respite_store_unseen_writes_total",
                "Outage writes to keys whose upstream value was never seen, applied as if the key were absent.",
            ),
            store_entries: gauge("respite_store_entries", "Entries in the local store."),
            store_bytes: gauge("respite_store_bytes", "Approximate bytes in the local store (its weighted size)."),
            journal_entries: gauge("respite_journal_entries", "Journal records waiting for replay."),
            journal_bytes: gauge(
                "respite_journal_bytes",
                "Bytes the journal holds, the figure [journal] max_bytes bounds: waiting records (in memory), or the segment files on disk (durable; may include replayed records that share a segment with waiting ones).",
            ),
            journal_oldest_age: prometheus::Gauge::new(
                "respite_journal_oldest_age_seconds",
                "Age of the oldest journal record waiting for replay (0 when empty).",
            )
            .expect("valid metric"),
            journal_appends: counter(
                "respite_journal_appends_total",
                "Writes (or MULTI blocks) appended to the journal.",
            ),
            journal_replayed: counter(
                "respite_journal_replayed_total",
                "Journal records applied upstream and confirmed.",
            ),
            journal_replay_errors: counter(
                "respite_journal_replay_errors_total",
                "Replayed commands the upstream answered with an error (counted, logged, not retried).",
            ),
            journal_fsyncs: counter(
                "respite_journal_fsyncs_total",
                "fsync rounds of the durable journal (concurrent writes share one with fsync = always).",
            ),
            journal_fsync_seconds: prometheus::Counter::new(
                "respite_journal_fsync_seconds_total",
                "Time spent in the durable journal's fsyncs; divided by the rounds: mean fsync latency.",
            )
            .expect("valid metric"),
            journal_failed: gauge(
                "respite_journal_failed",
                "1 after a failed journal fsync: respite refuses outage writes until restarted.",
            ),
            outage_refused: IntCounterVec::new(
                Opts::new("respite_outage_refused_total", "Commands refused during an outage, by reason."),
                &["reason"],
            )
            .expect("valid metric"),
            refresh: parking_lot::Mutex::new(None),
            commands_vec,
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.commands_vec.clone()),
            Box::new(self.command_duration.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.upstream_state.clone()),
            Box::new(self.state_transitions.clone()),
            Box::new(self.upstream_retries.clone()),
            Box::new(self.upstream_timeouts.clone()),
            Box::new(self.upstream_connects.clone()),
            Box::new(self.client_connections.clone()),
            Box::new(self.client_connections_accepted.clone()),
            Box::new(self.client_connections_rejected.clone()),
            Box::new(self.protocol_errors.clone()),
            Box::new(self.client_disconnects.clone()),
            Box::new(self.store_hits.clone()),
            Box::new(self.store_misses.clone()),
            Box::new(self.store_evictions.clone()),
            Box::new(self.store_unseen_writes.clone()),
            Box::new(self.store_entries.clone()),
            Box::new(self.store_bytes.clone()),
            Box::new(self.journal_entries.clone()),
            Box::new(self.journal_bytes.clone()),
            Box::new(self.journal_oldest_age.clone()),
            Box::new(self.journal_appends.clone()),
            Box::new(self.journal_replayed.clone()),
            Box::new(self.journal_replay_errors.clone()),
            Box::new(self.journal_fsyncs.clone()),
            Box::new(self.journal_fsync_seconds.clone()),
            Box::new(self.journal_failed.clone()),
            Box::new(self.outage_refused.clone()),
        ];
        for c in all {
            r.register(c).expect("metric names are unique");
        }
    }

    /// Counts one command with its outcome.
    #[inline]
    pub fn command(&self, id: CommandId, outcome: Outcome) {
        let id = id.min(self.commands.len() - 1);
        self.commands[id][outcome as usize]
            .get_or_init(|| self.commands_vec.with_label_values(&[&command::label(id), outcome.as_str()]))
            .inc();
    }

    /// Sets the function that refreshes scrape-time gauges.
    pub fn set_refresh(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        *self.refresh.lock() = Some(Box::new(f));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(f) = &*self.refresh.lock() {
            f(self);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_counters_use_bounded_labels() {
        let m = Metrics::new();
        let (get, _) = command::lookup(b"get").unwrap();
        m.command(get, Outcome::Ok);
        m.command(get, Outcome::Ok);
        m.command(command::other_id(), Outcome::Error);
        let text = m.render();
        assert!(text.contains("respite_commands_total{command=\"get\",outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("respite_commands_total{command=\"other\",outcome=\"error\"} 1"), "{text}");
    }
}
