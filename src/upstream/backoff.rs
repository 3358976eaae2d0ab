//! Exponential backoff with full jitter for retries.

use std::time::Duration;

/// Delay before retry number `attempt` (1-based): uniform in `[0, min(max, base·2^(attempt-1))]`.
pub fn delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20));
    let cap = exp.min(max);
    cap.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(200);
        for attempt in 1..30 {
            let cap = (base * 2u32.pow((attempt - 1).min(20))).min(max);
            for _ in 0..50 {
                assert!(delay(attempt, base, max) <= cap);
            }
        }
        // Jitter: not always the same value.
        let samples: std::collections::HashSet<_> = (0..20).map(|_| delay(5, base, max)).collect();
        assert!(samples.len() > 1);
    }
}
