//! Why a command did not get the upstream's answer, and the one place where that becomes
//! the RESP error a client sees.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use thiserror::Error;

use crate::metrics::Outcome;

/// An upstream failure, carrying what a retry decision needs: whether the command may
/// have been executed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP connect (or handshake) failed: nothing was sent.
    #[error("cannot connect to upstream {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The connection broke. `sent`: the request may have reached the upstream.
    #[error("upstream connection lost: {reason}")]
    Broken { reason: String, sent: bool },
    /// No reply within the timeout: the request was sent, its outcome is unknown.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The circuit breaker says down: nothing was sent.
    #[error("upstream is down")]
    Down,
    /// The connection that held the client's MULTI or WATCH is gone: nothing was sent, and
    /// no new connection may stand in for it.
    #[error("the upstream connection holding this client's MULTI/WATCH was lost")]
    TransactionLost,
    /// The upstream sent bytes that are not RESP.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// The replies would take the client past `client.output_buffer_limit`: they were read
    /// and dropped, and the client is disconnected (not an upstream failure).
    #[error("replies beyond client.output_buffer_limit")]
    ReplyLimit,
}

impl UpstreamError {
    /// Whether the request may have been executed by the upstream.
    pub fn maybe_executed(&self) -> bool {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::Down | UpstreamError::TransactionLost => false,
            UpstreamError::Broken { sent, .. } => *sent,
            UpstreamError::Timeout(_) | UpstreamError::Protocol(_) | UpstreamError::ReplyLimit => true,
        }
    }

    /// Whether trying again on a fresh connection may help (a timeout is final: the
    /// client's time is spent).
    pub fn retryable(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. } | UpstreamError::Broken { .. } | UpstreamError::Protocol(_))
    }

    /// The metric outcome of a command that ended with this error.
    pub fn outcome(&self, read_only: bool) -> Outcome {
        match self {
            UpstreamError::Timeout(_) => Outcome::Timeout,
            _ if !self.maybe_executed() => Outcome::Unavailable,
            _ if read_only => Outcome::Unavailable,
            _ => Outcome::Unknown,
        }
    }

    /// Appends the RESP error the client gets for `command`; `down_context` (from
    /// [`crate::health::Health::down_context`]) follows the `Down` error.
    pub fn write_reply(&self, command: &str, read_only: bool, down_context: Option<&str>, out: &mut BytesMut) {
        let msg = match self {
            UpstreamError::Timeout(d) if read_only => {
                format!("-TIMEOUT respite: upstream did not answer {command} within {d:?}")
            }
            UpstreamError::Timeout(d) => format!(
                "-TIMEOUT respite: upstream did not answer {command} within {d:?}; its outcome is unknown and it was not retried"
            ),
            UpstreamError::Down => match down_context {
                Some(c) => format!("-UNAVAILABLE respite: upstream down: {command} was not sent {c}"),
                None => format!("-UNAVAILABLE respite: upstream down: {command} was not sent"),
            },
            e if !e.maybe_executed() || read_only => format!("-UNAVAILABLE respite: {command} was not served: {}", oneline(e)),
            e => format!(
                "-UNKNOWN respite: {}; {command} was sent, its outcome is unknown and it was not retried",
                oneline(e)
            ),
        };
        write_error_line(out, &msg);
    }
}

fn oneline(e: &UpstreamError) -> String {
    e.to_string()
}

/// Redis's error for a command given the wrong number of arguments (`name` as the client
/// wrote it or as the table spells it: Redis shows it in lower case).
pub fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase())
}

/// Appends `-<msg>\r\n`, with any CR or LF in the message replaced (an error line must not
/// contain them).
pub fn write_error_line(out: &mut BytesMut, msg: &str) {
    out.reserve(msg.len() + 3);
    if !msg.starts_with('-') {
        out.put_u8(b'-');
    }
    for b in msg.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(e: &UpstreamError, read_only: bool) -> String {
        let mut out = BytesMut::new();
        e.write_reply("INCR", read_only, None, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_say_whether_the_outcome_is_known() {
        let broken = UpstreamError::Broken { reason: "reset".into(), sent: true };
        assert!(reply(&broken, false).starts_with("-UNKNOWN "));
        assert!(reply(&broken, false).contains("outcome is unknown"));
        assert!(reply(&broken, true).starts_with("-UNAVAILABLE "));
        let refused = UpstreamError::Connect { addr: "h:1".into(), reason: "refused\r\nx".into() };
        let r = reply(&refused, false);
        assert!(r.starts_with("-UNAVAILABLE ") && r.ends_with("\r\n") && r.matches('\n').count() == 1, "{r}");
        assert!(reply(&UpstreamError::Timeout(Duration::from_secs(1)), false).contains("outcome is unknown"));
        assert!(reply(&UpstreamError::Down, false).contains("upstream down"));
        assert_eq!(broken.outcome(false), Outcome::Unknown);
        assert_eq!(refused.outcome(false), Outcome::Unavailable);
        assert!(!UpstreamError::Timeout(Duration::ZERO).retryable());
        assert!(refused.retryable() && !refused.maybe_executed());
    }
}
