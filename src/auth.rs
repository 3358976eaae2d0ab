//! Client authentication: who may use this sidecar.
//!
//! `[client] requirepass` is the password of the `default` user (Redis's `requirepass`);
//! `[[client.users]]` adds ACL-style users, each with the SHA-256 of its password (hex), so
//! no plaintext password needs to sit in a ConfigMap. When any is configured, a client must
//! `AUTH [user] password` (or `HELLO 3 AUTH user password`) before anything else; respite
//! answers those itself and never forwards them (upstream credentials are respite's own, from
//! `[upstream]`). Passwords are compared as SHA-256 digests in constant time.

use sha2::{Digest, Sha256};

use crate::config::{ClientConfig, ConfigError};

/// The users allowed to connect.
#[derive(Clone, Default)]
pub struct Auth {
    /// (user name, SHA-256 of the password).
    users: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("users", &self.users.iter().map(|(u, _)| u).collect::<Vec<_>>()).finish()
    }
}

/// SHA-256 of a password.
pub fn digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

impl Auth {
    /// Builds the user list from `[client]`; a malformed hash is a configuration error.
    pub fn from_config(c: &ClientConfig) -> Result<Auth, ConfigError> {
        let mut users = Vec::new();
        if !c.requirepass.is_empty() {
            users.push(("default".to_string(), digest(c.requirepass.as_bytes())));
        }
        for (i, u) in c.users.iter().enumerate() {
            let hash = parse_hex32(&u.password_sha256).ok_or_else(|| ConfigError::Invalid {
                key: "client.users.password_sha256",
                value: format!("<entry {i}, user {}>", u.name),
                reason: "must be 64 hex digits: the SHA-256 of the password (e.g. `printf %s pw | sha256sum`)".into(),
            })?;
            if u.name.is_empty() || u.name.contains(char::is_whitespace) {
                return Err(ConfigError::Invalid {
                    key: "client.users.name",
                    value: u.name.clone(),
                    reason: "must be a non-empty name without spaces".into(),
                });
            }
            // A second entry would be a second password for the same user.
            if users.iter().any(|(name, _)| *name == u.name) {
                let reason = if u.name == "default" && !c.requirepass.is_empty() {
                    format!(
                        "entry {i} of [[client.users]] is the `default` user, whose password client.requirepass \
                         already sets; keep one of them"
                    )
                } else {
                    format!("entry {i} of [[client.users]] repeats a user name; each user may be listed once")
                };
                return Err(ConfigError::Invalid { key: "client.users.name", value: u.name.clone(), reason });
            }
            users.push((u.name.clone(), hash));
        }
        Ok(Auth { users })
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks a user (None: `default`) and password, in constant time per user.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> bool {
        let user = user.unwrap_or(b"default");
        let given = digest(password);
        let mut ok = false;
        for (name, hash) in &self.users {
            // Every entry is compared, so timing does not tell which user exists.
            let same = constant_time_eq(&given, hash);
            ok |= same & (name.as_bytes() == user);
        }
        ok
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// Compares secrets without an early exit, so timing does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Lengths that differ by a multiple of 65536 used to cancel out here (only their low
    // 16 bits were kept): "" equalled 65536 zero bytes.
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn requirepass_and_users() {
        let c = ClientConfig {
            requirepass: "sesame".into(),
            users: vec![UserConfig { name: "app".into(), password_sha256: hex(digest(b"s3cret")) }],
            ..ClientConfig::default()
        };
        let a = Auth::from_config(&c).unwrap();
        assert!(a.required());
        assert!(a.check(None, b"sesame"));
        assert!(a.check(Some(b"default"), b"sesame"));
        assert!(a.check(Some(b"app"), b"s3cret"));
        assert!(!a.check(Some(b"app"), b"sesame"));
        assert!(!a.check(None, b"s3cret"));
        assert!(!a.check(Some(b"nobody"), b"s3cret"));
        assert!(!format!("{a:?}").contains("sesame"));
    }

    #[test]
    fn no_users_means_no_auth_and_bad_hashes_are_config_errors() {
        assert!(!Auth::from_config(&ClientConfig::default()).unwrap().required());
        let c = ClientConfig {
            users: vec![UserConfig { name: "app".into(), password_sha256: "abc".into() }],
            ..ClientConfig::default()
        };
        let e = Auth::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("client.users.password_sha256"), "{e}");
    }

    #[test]
    fn a_user_listed_twice_is_a_config_error() {
        let user = |name: &str, pw: &[u8]| UserConfig { name: name.into(), password_sha256: hex(digest(pw)) };
        // Both passwords of `default` worked.
        let c = ClientConfig {
            requirepass: "sesame".into(),
            users: vec![user("app", b"a"), user("default", b"other")],
            ..ClientConfig::default()
        };
        let e = Auth::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("client.users.name") && e.contains("entry 1") && e.contains("client.requirepass"), "{e}");
        let c = ClientConfig { users: vec![user("app", b"a"), user("app", b"b")], ..ClientConfig::default() };
        let e = Auth::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("client.users.name") && e.contains("\"app\"") && e.contains("repeats"), "{e}");
        assert!(!e.contains(&hex(digest(b"b"))), "{e}");
        // `default` without requirepass is an ordinary user.
        let c = ClientConfig { users: vec![user("default", b"a")], ..ClientConfig::default() };
        assert!(Auth::from_config(&c).unwrap().check(None, b"a"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"", &[0u8; 65536]));
        assert!(!constant_time_eq(&[0xffu8; 65536], b""));
        assert!(!constant_time_eq(b"ab", &[b'a', b'b', 0xff].repeat(1 << 16)[..(1 << 16) + 2]));
    }
}
