//! Upstream health: a circuit breaker fed by real traffic and by a background PING probe.
//!
//! `healthy` → `degraded` on slow round trips (moving average above
//! `health.degraded_latency`) or on failures below the threshold; → `down` after
//! `health.down_after_failures` consecutive failures (connect errors, timeouts, broken
//! connections). `degraded` entered on a failure ends once no failure has been seen for
//! `health.recover_after` and round trips are normal again. While `down` no client traffic
//! is sent upstream (fail fast); only the probe tries, and its first success brings the
//! state back. An operator drill forces `down`.
//! Each transition is logged once, with its cause, and counted.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::HealthConfig;
use crate::metrics::Metrics;

/// The upstream's state as respite sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Healthy = 0,
    Degraded = 1,
    Down = 2,
    Replaying = 3,
}

impl State {
    pub const ALL: [State; 4] = [State::Healthy, State::Degraded, State::Down, State::Replaying];
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Down => "down",
            State::Replaying => "replaying",
        }
    }
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Healthy,
            1 => State::Degraded,
            2 => State::Down,
            _ => State::Replaying,
        }
    }
}

/// The last upstream error, for `/status` (and, by `seen`, for `health.recover_after`).
#[derive(Debug, Clone)]
pub struct LastError {
    pub message: String,
    pub at: SystemTime,
    /// `at` on the monotonic clock, for `health.recover_after`.
    pub seen: Instant,
}

/// The circuit breaker.
pub struct Health {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// Moving average of upstream round trips, in microseconds.
    latency_ewma_us: AtomicU64,
    drill: AtomicBool,
    /// The journal holds writes not yet replayed: recovery goes through `replaying`.
    journal_pending: AtomicBool,
    last_error: Mutex<Option<LastError>>,
    /// The cause of the last transition to `down`, for the errors clients get while it lasts.
    down_cause: Mutex<String>,
    /// Serialises transitions so each is logged and counted exactly once.
    transition: Mutex<()>,
    /// `[health]`, in microseconds: atomics because a configuration reload (SIGHUP) replaces
    /// them while real traffic and the probe read them.
    degraded_latency_us: AtomicU64,
    down_after_failures: AtomicU32,
    /// `health.recover_after`: counted from the last failure (`last_error`).
    recover_after_us: AtomicU64,
    probe_interval_us: AtomicU64,
    probe_timeout_us: AtomicU64,
    metrics: Arc<Metrics>,
    since: Mutex<Instant>,
}

impl Health {
    pub fn new(cfg: HealthConfig, metrics: Arc<Metrics>) -> Health {
        for s in State::ALL {
            metrics.upstream_state.with_label_values(&[s.as_str()]).set((s == State::Healthy) as i64);
        }
        let h = Health {
            state: AtomicU8::new(State::Healthy as u8),
            consecutive_failures: AtomicU32::new(0),
            latency_ewma_us: AtomicU64::new(0),
            drill: AtomicBool::new(false),
            journal_pending: AtomicBool::new(false),
            last_error: Mutex::new(None),
            down_cause: Mutex::new(String::new()),
            transition: Mutex::new(()),
            degraded_latency_us: AtomicU64::new(0),
            down_after_failures: AtomicU32::new(0),
            recover_after_us: AtomicU64::new(0),
            probe_interval_us: AtomicU64::new(0),
            probe_timeout_us: AtomicU64::new(0),
            metrics,
            since: Mutex::new(Instant::now()),
        };
        h.set_config(&cfg);
        h
    }

    /// Takes new `[health]` settings (at start, and when the configuration is reloaded): the
    /// next round trip, failure and probe use them. The state itself is kept.
    pub fn set_config(&self, cfg: &HealthConfig) {
        // Rounded up: a sub-microsecond value must not become 0 (a zero probe period panics).
        let us = |d: Duration| d.as_nanos().div_ceil(1000).min(u64::MAX as u128) as u64;
        self.degraded_latency_us.store(us(cfg.degraded_latency.0), Ordering::Relaxed);
        self.down_after_failures.store(cfg.down_after_failures, Ordering::Relaxed);
        self.recover_after_us.store(us(cfg.recover_after.0), Ordering::Relaxed);
        self.probe_interval_us.store(us(cfg.probe_interval.0), Ordering::Relaxed);
        self.probe_timeout_us.store(us(cfg.probe_timeout.0), Ordering::Relaxed);
    }

    /// `health.probe_interval`: how often the probe sends PING.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_micros(self.probe_interval_us.load(Ordering::Relaxed))
    }

    /// `health.probe_timeout`: a PING slower than this is a failure.
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_micros(self.probe_timeout_us.load(Ordering::Relaxed))
    }

    /// The current state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether client traffic may be sent upstream now.
    #[inline]
    pub fn upstream_usable(&self) -> bool {
        self.state() != State::Down
    }

    /// Moving average of upstream round trips.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_ewma_us.load(Ordering::Relaxed))
    }

    /// What a client refused because the upstream is down is told, in brackets after the
    /// error: the state, for how long, and why it went down (the breaker's cause, or the
    /// operator drill), e.g. `[upstream down for 12s, down because: 3 consecutive upstream
    /// failures, last: cannot connect to upstream 10.0.0.5:6379: Connection refused (os
    /// error 111)]`. Causes never contain secrets.
    pub fn down_context(&self) -> String {
        let cause = self.down_cause.lock().clone();
        let secs = self.since.lock().elapsed().as_secs();
        let cause = if cause.is_empty() { "unknown" } else { &cause };
        format!("[upstream {} for {secs}s, down because: {cause}]", self.state().as_str())
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().clone()
    }

    pub fn drill_active(&self) -> bool {
        self.drill.load(Ordering::Acquire)
    }

    /// Time spent in the current state.
    pub fn in_state_for(&self) -> Duration {
        self.since.lock().elapsed()
    }

    /// A successful upstream round trip (real traffic or probe).
    pub fn record_success(&self, latency: Duration) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let sample = latency.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        // EWMA with alpha = 1/8; races between threads only lose a sample.
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.latency_ewma_us.store(new, Ordering::Relaxed);
        let threshold = self.degraded_latency_us.load(Ordering::Relaxed);
        let slow = new > threshold;
        match self.state() {
            State::Replaying | State::Down => {}
            State::Healthy if slow => {
                self.transition_from(
                    &[State::Healthy],
                    State::Degraded,
                    &format!(
                        "upstream latency {:?} above {:?}",
                        Duration::from_micros(new),
                        Duration::from_micros(threshold)
                    ),
                );
            }
            State::Degraded if !slow && self.quiet_for_recovery() => {
                self.transition_from(&[State::Degraded], State::Healthy, "upstream answering normally again");
            }
            _ => {}
        }
    }

    /// A probe PING answered: the only way out of `down` — to `replaying` when the journal
    /// holds writes, else to `healthy`.
    pub fn probe_succeeded(&self, latency: Duration) {
        if self.state() == State::Down && !self.drill_active() {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.latency_ewma_us.store(latency.as_micros() as u64, Ordering::Relaxed);
            if self.journal_pending.load(Ordering::SeqCst) {
                self.transition(State::Replaying, "probe PING answered; replaying the journal");
            } else {
                self.transition(State::Healthy, "probe PING answered");
                // A write journaled between the check above and the transition saw `down`
                // and left recovery to this probe: look again (with `journal_written`'s
                // check after its mark, one of the two always sees the other).
                if self.journal_pending.load(Ordering::SeqCst) {
                    self.replay_late_write();
                }
            }
        } else if self.state() != State::Replaying {
            self.record_success(latency);
        } else {
            // While replaying the state is the replayer's to end, but an answered probe
            // still breaks a run of failures.
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// The journal received a write (or, at start, holds some).
    pub fn set_journal_pending(&self) {
        self.journal_pending.store(true, Ordering::SeqCst);
    }

    /// A write was journaled (under the outage lock, after seeing `down` or `replaying`).
    /// The probe may have ended the outage in between without seeing the journal
    /// non-empty: then recovery goes through `replaying` after all, so the write is not
    /// left behind in the journal while commands are forwarded directly.
    pub fn journal_written(&self) {
        self.set_journal_pending();
        if matches!(State::from_u8(self.state.load(Ordering::SeqCst)), State::Healthy | State::Degraded) {
            self.replay_late_write();
        }
    }

    /// The outage ended with a write journaled at its very end: recovery goes through
    /// `replaying` after all (from a healthy or degraded state only).
    fn replay_late_write(&self) {
        self.transition_from(
            &[State::Healthy, State::Degraded],
            State::Replaying,
            "a write was journaled as the outage ended; replaying it",
        );
    }

    /// At start with a non-empty durable journal: replay before forwarding anything.
    pub fn start_replay(&self) {
        self.set_journal_pending();
        self.transition(State::Replaying, "journal holds writes from before the restart");
    }

    /// The replayer drained the journal (under the outage lock): forward directly again.
    pub fn replay_finished(&self) {
        self.journal_pending.store(false, Ordering::Release);
        // Only from replaying: a failure that took the state down meanwhile stands until the
        // probe sees the upstream again.
        self.transition_from(&[State::Replaying], State::Healthy, "journal replayed");
    }

    /// No failure for `health.recover_after`: `degraded` may end.
    fn quiet_for_recovery(&self) -> bool {
        let hold = Duration::from_micros(self.recover_after_us.load(Ordering::Relaxed));
        hold.is_zero() || self.last_error.lock().as_ref().is_none_or(|e| e.seen.elapsed() >= hold)
    }

    /// A failed upstream interaction, with its cause (never containing secrets).
    pub fn record_failure(&self, cause: &str) {
        let (at, seen) = (SystemTime::now(), Instant::now());
        *self.last_error.lock() = Some(LastError { message: cause.to_string(), at, seen });
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        match self.state() {
            State::Down => {}
            _ if n >= self.down_after_failures.load(Ordering::Relaxed) => {
                self.transition(State::Down, &format!("{n} consecutive upstream failures, last: {cause}"))
            }
            State::Healthy => {
                self.transition_from(&[State::Healthy], State::Degraded, &format!("upstream failure: {cause}"));
            }
            _ => {}
        }
    }

    /// Starts or ends an operator drill: the upstream is treated as unreachable.
    /// Logged once per start or end (a repeated request changes nothing and logs nothing).
    pub fn set_drill(&self, on: bool) {
        if self.drill.swap(on, Ordering::AcqRel) == on {
            return;
        }
        if !on {
            tracing::info!("operator drill ended; the probe decides the state again");
        } else if !self.transition_from(&State::ALL, State::Down, "operator drill started") {
            tracing::info!(state = self.state().as_str(), "operator drill started; the upstream was already down");
        }
    }

    #[cfg(test)]
    fn transition_for_test(&self, to: State) {
        self.transition(to, "test");
    }

    fn transition(&self, to: State, cause: &str) {
        self.transition_from(&State::ALL, to, cause);
    }

    /// A transition that happens only from one of the states in `from`; whether it did.
    /// Real traffic on many threads decides a transition from the state it read before
    /// taking the lock: it names that state here, so a transition taken meanwhile (to
    /// `down`, to `replaying`) is not overwritten by a decision made on the state before it.
    fn transition_from(&self, allowed: &[State], to: State, cause: &str) -> bool {
        let _guard = self.transition.lock();
        let from = self.state();
        if from == to || !allowed.contains(&from) || (self.drill_active() && to != State::Down) {
            return false;
        }
        if to == State::Down {
            *self.down_cause.lock() = cause.to_string();
        }
        *self.since.lock() = Instant::now();
        self.state.store(to as u8, Ordering::SeqCst);
        self.metrics.upstream_state.with_label_values(&[from.as_str()]).set(0);
        self.metrics.upstream_state.with_label_values(&[to.as_str()]).set(1);
        self.metrics.state_transitions.with_label_values(&[from.as_str(), to.as_str()]).inc();
        match to {
            State::Down => {
                tracing::warn!(state.from = from.as_str(), state.to = to.as_str(), cause, "upstream state changed")
            }
            _ => tracing::info!(state.from = from.as_str(), state.to = to.as_str(), cause, "upstream state changed"),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn health() -> Health {
        // recover_after 0: these tests are about the transitions themselves.
        let cfg = HealthConfig {
            down_after_failures: 3,
            degraded_latency: Dur::ms(50),
            recover_after: Dur::ms(0),
            ..HealthConfig::default()
        };
        Health::new(cfg, Arc::new(Metrics::new()))
    }

    #[test]
    fn degraded_after_a_failure_ends_only_after_recover_after_without_failures() {
        let cfg = HealthConfig { recover_after: Dur::ms(300), ..HealthConfig::default() };
        let h = Health::new(cfg, Arc::new(Metrics::new()));
        let fast = Duration::from_micros(100);
        h.record_failure("refused");
        assert_eq!(h.state(), State::Degraded);
        h.record_success(fast);
        assert_eq!(h.state(), State::Degraded, "a success right after a failure does not end degraded");
        std::thread::sleep(Duration::from_millis(200));
        h.record_failure("refused");
        std::thread::sleep(Duration::from_millis(200));
        h.record_success(fast);
        assert_eq!(h.state(), State::Degraded, "the second failure restarted the wait");
        std::thread::sleep(Duration::from_millis(150));
        h.record_success(fast);
        assert_eq!(h.state(), State::Healthy, "quiet for longer than recover_after");
        // A failure-free slow spell ends as soon as the average is normal again.
        for _ in 0..50 {
            h.record_success(Duration::from_millis(200));
        }
        assert_eq!(h.state(), State::Degraded);
        for _ in 0..100 {
            h.record_success(fast);
        }
        assert_eq!(h.state(), State::Healthy);
    }

    #[test]
    fn failures_degrade_then_take_down_and_only_the_probe_restores() {
        let h = health();
        assert_eq!(h.state(), State::Healthy);
        h.record_failure("connection refused");
        assert_eq!(h.state(), State::Degraded);
        h.record_failure("connection refused");
        assert_eq!(h.state(), State::Degraded);
        h.record_failure("connection refused");
        assert_eq!(h.state(), State::Down);
        assert!(!h.upstream_usable());
        assert_eq!(
            h.down_context(),
            "[upstream down for 0s, down because: 3 consecutive upstream failures, last: connection refused]"
        );
        h.record_success(Duration::from_micros(100));
        assert_eq!(h.state(), State::Down, "real traffic does not reopen the breaker");
        h.probe_succeeded(Duration::from_micros(100));
        assert_eq!(h.state(), State::Healthy);
        assert_eq!(h.last_error().unwrap().message, "connection refused");
        let text = h.metrics.render();
        assert!(text.contains("respite_upstream_state{state=\"healthy\"} 1"), "{text}");
        assert!(text.contains("respite_upstream_state_transitions_total{from=\"degraded\",to=\"down\"} 1"), "{text}");
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let h = health();
        h.record_failure("x");
        h.record_failure("x");
        h.record_success(Duration::from_micros(100));
        assert_eq!(h.state(), State::Healthy);
        h.record_failure("x");
        h.record_failure("x");
        assert_eq!(h.state(), State::Degraded);
    }

    #[test]
    fn slow_round_trips_degrade() {
        let h = health();
        for _ in 0..50 {
            h.record_success(Duration::from_millis(200));
        }
        assert_eq!(h.state(), State::Degraded);
        for _ in 0..100 {
            h.record_success(Duration::from_micros(100));
        }
        assert_eq!(h.state(), State::Healthy);
    }

    #[test]
    fn recovery_goes_through_replaying_while_the_journal_holds_writes() {
        let h = health();
        for _ in 0..3 {
            h.record_failure("refused");
        }
        h.set_journal_pending();
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Replaying);
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Replaying, "only the replayer ends replaying");
        h.replay_finished();
        assert_eq!(h.state(), State::Healthy);
        h.transition_for_test(State::Down);
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Healthy, "an empty journal recovers directly");
    }

    #[test]
    fn sub_microsecond_settings_do_not_become_zero() {
        let h = health();
        h.set_config(&HealthConfig {
            probe_interval: Dur(Duration::from_nanos(500)),
            probe_timeout: Dur(Duration::from_nanos(999)),
            ..HealthConfig::default()
        });
        assert_eq!((h.probe_interval(), h.probe_timeout()), (Duration::from_micros(1), Duration::from_micros(1)));
    }

    #[test]
    fn new_thresholds_apply_to_the_next_failure_and_probe() {
        let h = health();
        h.record_failure("x");
        h.set_config(&HealthConfig {
            down_after_failures: 2,
            probe_interval: Dur::ms(70),
            probe_timeout: Dur::ms(30),
            ..HealthConfig::default()
        });
        assert_eq!((h.probe_interval(), h.probe_timeout()), (Duration::from_millis(70), Duration::from_millis(30)));
        h.record_failure("x");
        assert_eq!(h.state(), State::Down, "the second failure reaches the lowered threshold");
    }

    #[test]
    fn a_write_journaled_as_the_probe_ends_the_outage_is_replayed() {
        // The probe saw an empty journal and went to healthy while a write that had seen
        // `down` was being journaled: the write sends recovery through `replaying`.
        let h = health();
        h.transition_for_test(State::Down);
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Healthy);
        h.journal_written();
        assert_eq!(h.state(), State::Replaying);
        h.replay_finished();
        assert_eq!(h.state(), State::Healthy);
        // In an outage it only marks the journal: the probe then goes to replaying.
        h.transition_for_test(State::Down);
        h.journal_written();
        assert_eq!(h.state(), State::Down);
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Replaying);
    }

    #[test]
    fn while_replaying_an_answered_probe_breaks_a_run_of_failures_and_only_replaying_ends_in_healthy() {
        let h = health();
        h.transition_for_test(State::Replaying);
        h.record_failure("x");
        h.record_failure("x");
        h.probe_succeeded(Duration::from_micros(10));
        h.record_failure("x");
        assert_eq!(h.state(), State::Replaying, "two failures, a success, one failure: not three in a row");
        h.record_failure("x");
        h.record_failure("x");
        assert_eq!(h.state(), State::Down);
        h.replay_finished();
        assert_eq!(h.state(), State::Down, "a drained journal does not end an outage the probe has not");
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Healthy);
    }

    /// What `f` logs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buf.0.lock().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn each_drill_start_and_end_is_logged_once() {
        let count = |logs: &str, needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
        // From healthy: the transition's line, with the drill as its cause.
        let h = health();
        let logs = logged(|| {
            h.set_drill(true);
            h.set_drill(true);
            h.set_drill(false);
            h.set_drill(false);
        });
        assert_eq!(count(&logs, "operator drill started"), 1, "{logs}");
        assert_eq!(count(&logs, "operator drill ended"), 1, "{logs}");
        // In a real outage there is no transition, yet the operator's drill is logged.
        let h = health();
        for _ in 0..3 {
            h.record_failure("refused");
        }
        let logs = logged(|| {
            h.set_drill(true);
            h.set_drill(false);
            h.set_drill(false);
        });
        assert_eq!(count(&logs, "operator drill started"), 1, "{logs}");
        assert_eq!(count(&logs, "operator drill ended"), 1, "{logs}");
    }

    /// Runs `act` on another thread, which decides its transition from `before` and then
    /// waits for the transition lock; meanwhile another transition (taken while `act` waits)
    /// moves the state to `meanwhile`. Returns the state after `act` finished.
    fn decided_from_a_stale_state(before: State, meanwhile: State, act: fn(&Health)) -> State {
        let h = Arc::new(health());
        h.transition_for_test(before);
        let guard = h.transition.lock();
        let h2 = h.clone();
        let t = std::thread::spawn(move || act(&h2));
        // Long enough for `act` to read the state and block on the lock.
        std::thread::sleep(Duration::from_millis(200));
        h.state.store(meanwhile as u8, Ordering::SeqCst);
        drop(guard);
        t.join().unwrap();
        h.state()
    }

    #[test]
    fn a_transition_decided_from_a_state_that_changed_meanwhile_is_not_taken() {
        // A slow round trip seen while healthy (→ degraded) as a failure takes it down.
        let slow = |h: &Health| h.record_success(Duration::from_millis(200));
        assert_eq!(decided_from_a_stale_state(State::Healthy, State::Down, slow), State::Down);
        // A failure seen while healthy (→ degraded) as another failure takes it down.
        let failed = |h: &Health| h.record_failure("refused");
        assert_eq!(decided_from_a_stale_state(State::Healthy, State::Down, failed), State::Down);
        // A fast round trip seen while degraded (→ healthy) as a failure takes it down, or
        // as a write journaled at the end of an outage sends recovery through replaying.
        let fast = |h: &Health| h.record_success(Duration::from_micros(100));
        assert_eq!(decided_from_a_stale_state(State::Degraded, State::Down, fast), State::Down);
        assert_eq!(decided_from_a_stale_state(State::Degraded, State::Replaying, fast), State::Replaying);
    }

    #[test]
    fn drill_forces_down_until_ended() {
        let h = health();
        h.set_drill(true);
        assert_eq!(h.state(), State::Down);
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Down);
        h.set_drill(false);
        h.probe_succeeded(Duration::from_micros(10));
        assert_eq!(h.state(), State::Healthy);
    }
}
