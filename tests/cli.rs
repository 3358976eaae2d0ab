//! The real `respite` binary: `check-config`, configuration errors and their exit code,
//! precedence of flags, environment, file and defaults, redaction of secrets, start-up,
//! readiness, SIGTERM and graceful drain, JSON logs.

mod common;
use common::*;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// `EX_USAGE`, the exit code of every configuration error.
const EXIT_CONFIG: i32 = 64;

/// Every environment variable respite reads; removed from every child so the test's own
/// environment cannot leak into the results.
const RESPITE_ENV: &[&str] = &[
    "RESPITE_CONFIG",
    "RESPITE_LISTEN",
    "RESPITE_UPSTREAM",
    "RESPITE_ADMIN_LISTEN",
    "RESPITE_JOURNAL_DIR",
    "RESPITE_LOG_FORMAT",
    "RESPITE_LOG_LEVEL",
    "RESPITE_UPSTREAM_PASSWORD",
    "RESPITE_ADMIN_TOKEN",
    "RESPITE_REQUIREPASS",
];

/// A `respite` command with a clean environment (no `RESPITE_*`, no `RUST_LOG`).
fn respite_cmd() -> Command {
    let mut c = Command::new(respite_bin());
    for v in RESPITE_ENV {
        c.env_remove(v);
    }
    c.env_remove("RUST_LOG");
    c.stdin(Stdio::null());
    c
}

/// Runs a `respite` invocation that must finish on its own (check-config, errors), bounded.
fn run(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Guard(Some(cmd.spawn().expect("respite binary runs")));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            return child.0.take().unwrap().wait_with_output().unwrap();
        }
        assert!(Instant::now() < deadline, "respite did not exit within 10s: {cmd:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `respite check-config` with extra arguments and environment.
fn check(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = respite_cmd();
    cmd.arg("check-config").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Asserts success and parses the printed configuration.
fn effective(o: &Output) -> toml::Value {
    assert_eq!(o.status.code(), Some(0), "check-config failed: stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
    toml::from_str(&stdout(o)).unwrap_or_else(|e| panic!("check-config output is not TOML ({e}):\n{}", stdout(o)))
}

/// `value[section][key]` as a string.
fn get(v: &toml::Value, section: &str, key: &str) -> Option<String> {
    v.get(section)?.get(key)?.as_str().map(str::to_string)
}

/// Asserts a configuration error: exit 64, and the message (stderr) contains each needle.
fn assert_config_error(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(EXIT_CONFIG),
        "expected exit {EXIT_CONFIG}; stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "stderr does not mention {n:?}:\n{err}");
    }
}

/// A temporary config file.
struct TempConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempConfig {
    fn new(text: &str) -> TempConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("respite.toml");
        std::fs::write(&path, text).unwrap();
        TempConfig { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Kills and reaps a spawned child on drop, so no test leaves a respite behind.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `respite` server process with its output in files.
struct Server {
    child: Guard,
    port: u16,
    admin_port: u16,
    _logs: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Starts `respite` on free ports with the given extra arguments.
    fn start(upstream: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let mut admin_port = free_port();
        while admin_port == port {
            admin_port = free_port();
        }
        let logs = tempfile::tempdir().unwrap();
        let out = logs.path().join("stdout");
        let err = logs.path().join("stderr");
        let mut cmd = respite_cmd();
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--upstream")
            .arg(upstream)
            .args(extra)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        let child = Guard(Some(cmd.spawn().expect("respite binary runs")));
        let mut s = Server { child, port, admin_port, _logs: logs, stdout: out, stderr: err };
        s.wait_listening();
        s
    }

    fn pid(&self) -> u32 {
        self.child.0.as_ref().expect("running").id()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).is_ok()
            {
                return;
            }
            if let Some(status) = self.child.0.as_mut().unwrap().try_wait().unwrap() {
                panic!("respite exited during start-up with {status}; stderr:\n{}", self.stderr_text());
            }
            assert!(
                Instant::now() < deadline,
                "respite did not listen on {} and {} within 10s; stderr:\n{}",
                self.port,
                self.admin_port,
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.as_mut().unwrap().try_wait().unwrap() {
                self.child.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "respite did not exit within {within:?} after SIGTERM; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn admin(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.admin_port).into()
    }
}

// ---------------------------------------------------------------------------------------
// 1. check-config with no configuration prints the defaults.

fn assert_defaults(v: &toml::Value) {
    assert_eq!(get(v, "client", "listen").as_deref(), Some("127.0.0.1:6380"), "{v}");
    assert_eq!(get(v, "upstream", "url").as_deref(), Some("redis://127.0.0.1:6379"), "{v}");
    assert_eq!(get(v, "admin", "listen").as_deref(), Some("127.0.0.1:9480"), "{v}");
}

#[test]
fn check_config_without_config_prints_the_defaults() {
    let o = check(&[], &[]);
    let v = effective(&o);
    assert_defaults(&v);
    assert_eq!(get(&v, "log", "format").as_deref(), Some("text"), "{v}");
    assert_eq!(get(&v, "log", "level").as_deref(), Some("info"), "{v}");
    assert!(v.get("journal").and_then(|j| j.get("dir")).is_none(), "no journal dir by default: {v}");
}

#[test]
fn dash_dash_check_config_works_the_same() {
    let sub = check(&[], &[]);
    let mut cmd = respite_cmd();
    cmd.arg("--check-config");
    let flag = run(cmd);
    let v = effective(&flag);
    assert_defaults(&v);
    assert_eq!(stdout(&flag), stdout(&sub), "same output as check-config");
}

// ---------------------------------------------------------------------------------------
// 2. Unknown keys and sections are errors naming them.

#[test]
fn unknown_key_is_an_error_naming_the_key() {
    let f = TempConfig::new("[client]\nmax_conections = 5\n");
    let o = check(&["--config", f.arg()], &[]);
    assert_config_error(&o, &["max_conections"]);
    // The server refuses it too, before binding anything.
    let mut cmd = respite_cmd();
    cmd.args([
        "--config",
        f.arg(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let o = run(cmd);
    assert_config_error(&o, &["max_conections"]);
}

#[test]
fn unknown_section_is_an_error_naming_it() {
    let f = TempConfig::new("[clinet]\nlisten = \"127.0.0.1:7000\"\n");
    let o = check(&["--config", f.arg()], &[]);
    assert_config_error(&o, &["clinet"]);
}

#[test]
fn unknown_top_level_key_is_an_error_naming_it() {
    let f = TempConfig::new("listen = \"127.0.0.1:7000\"\n");
    let o = check(&["--config", f.arg()], &[]);
    assert_config_error(&o, &["listen"]);
}

#[test]
fn missing_config_file_is_a_config_error() {
    let o = check(&["--config", "/nonexistent/respite-no-such.toml"], &[]);
    assert_config_error(&o, &["/nonexistent/respite-no-such.toml"]);
}

// ---------------------------------------------------------------------------------------
// 3. Bad values name the key (and value) and exit 64.

#[test]
fn bad_duration_names_the_key() {
    let f = TempConfig::new("[upstream]\ncommand_timeout = \"soon\"\n");
    let o = check(&["--config", f.arg()], &[]);
    assert_config_error(&o, &["command_timeout"]);
}

#[test]
fn durations_that_would_count_as_zero_or_overflow_stop_the_server() {
    for (text, key) in [
        // The probe panicked on its zero period and respite stayed down.
        ("[health]\nprobe_interval = \"500ns\"\n", "health.probe_interval"),
        // SIGTERM panicked adding it to the clock (exit 101, journal not closed).
        ("[shutdown]\ngrace_period = \"300000000000y\"\n", "shutdown.grace_period"),
    ] {
        let f = TempConfig::new(text);
        assert_config_error(&check(&["--config", f.arg()], &[]), &[key]);
        let mut cmd = respite_cmd();
        cmd.args(["--config", f.arg(), "--listen", &format!("127.0.0.1:{}", free_port())]);
        assert_config_error(&run(cmd), &[key]);
    }
}

#[test]
fn bad_listen_flag_names_key_and_value() {
    let o = check(&["--listen", "nonsense"], &[]);
    assert_config_error(&o, &["client.listen", "nonsense"]);
}

#[test]
fn bad_upstream_scheme_is_explained() {
    let o = check(&["--upstream", "http://x"], &[]);
    assert_config_error(&o, &["upstream.url", "scheme"]);
}

#[test]
fn bad_log_level_is_an_error() {
    let o = check(&["--log-level", "loud!!"], &[]);
    assert_config_error(&o, &["log.level", "loud!!"]);
}

#[test]
fn an_empty_log_level_is_an_error() {
    // It silenced every INFO line.
    assert_config_error(&check(&["--log-level="], &[]), &["log.level", "must not be empty"]);
    assert_config_error(&check(&[], &[("RESPITE_LOG_LEVEL", "")]), &["log.level", "must not be empty"]);
    let f = TempConfig::new("[log]\nlevel = \" \"\n");
    assert_config_error(&check(&["--config", f.arg()], &[]), &["log.level", "must not be empty"]);
}

#[test]
fn secret_environment_variables_set_but_empty_are_errors() {
    // An empty RESPITE_REQUIREPASS turned client authentication off over the file's.
    let f = TempConfig::new("[client]\nrequirepass = \"hunter3\"\n[admin]\ntoken = \"hunter4\"\n");
    for name in ["RESPITE_REQUIREPASS", "RESPITE_ADMIN_TOKEN", "RESPITE_UPSTREAM_PASSWORD"] {
        let o = check(&["--config", f.arg()], &[(name, "")]);
        assert_config_error(&o, &[name, "is set but empty"]);
    }
}

#[test]
fn values_refused_by_the_command_line_parser_exit_64() {
    // They exited 2, not the documented 64 of every configuration error.
    let o = check(&["--log-format", "yaml"], &[]);
    assert_config_error(&o, &["'yaml'", "--log-format"]);
    assert!(!stderr(&o).contains("RESPITE_LOG_FORMAT"), "the flag gave it:\n{}", stderr(&o));
    let o = check(&[], &[("RESPITE_LOG_FORMAT", "JSON")]);
    assert_config_error(&o, &["'JSON'", "--log-format", "environment variable RESPITE_LOG_FORMAT"]);
    let mut cmd = respite_cmd();
    cmd.args(["--log-format=yaml", "--listen", &format!("127.0.0.1:{}", free_port())]);
    assert_config_error(&run(cmd), &["'yaml'"]);
    // A stray argument is quoted without a URL's password.
    let o = check(&["redis://app:hunter2@10.0.0.1:6379"], &[]);
    assert_config_error(&o, &["unexpected argument", "<redacted>"]);
    assert!(!both(&o).contains("hunter2"), "{}", both(&o));
    // --help and --version still exit 0.
    for flag in ["--help", "--version"] {
        let mut cmd = respite_cmd();
        cmd.arg(flag);
        let o = run(cmd);
        assert_eq!(o.status.code(), Some(0), "{flag}: {}", both(&o));
    }
}

#[test]
fn one_address_for_both_listeners_is_an_error() {
    let o = check(&["--listen", "127.0.0.1:7000", "--admin-listen", "127.0.0.1:7000"], &[]);
    assert_config_error(&o, &["admin.listen", "client.listen", "127.0.0.1:7000"]);
}

#[test]
fn bad_values_also_stop_the_server_before_it_binds() {
    let listen = free_port();
    let mut cmd = respite_cmd();
    cmd.args(["--listen", &format!("127.0.0.1:{listen}"), "--admin-listen", "nonsense"]);
    let o = run(cmd);
    assert_config_error(&o, &["admin.listen", "nonsense"]);
}

// ---------------------------------------------------------------------------------------
// 4. Precedence: flag > environment > file > default.

/// Checks precedence of one setting.
/// `file`: the config file text setting it to A; `env`: the variable; `flag`: the flag;
/// values A, B, C; `read`: extracts the effective value; `default`: the built-in value.
#[allow(clippy::too_many_arguments)]
fn assert_precedence(
    file: &str,
    env: &str,
    flag: &str,
    (a, b, c): (&str, &str, &str),
    default: Option<&str>,
    read: impl Fn(&toml::Value) -> Option<String>,
) {
    let f = TempConfig::new(file);
    let all = check(&["--config", f.arg(), flag, c], &[(env, b)]);
    assert_eq!(read(&effective(&all)).as_deref(), Some(c), "flag {flag} must win over {env} and the file");
    let env_file = check(&["--config", f.arg()], &[(env, b)]);
    assert_eq!(read(&effective(&env_file)).as_deref(), Some(b), "{env} must win over the file");
    let file_only = check(&["--config", f.arg()], &[]);
    assert_eq!(read(&effective(&file_only)).as_deref(), Some(a), "the file must win over the default");
    let flag_env = check(&[flag, c], &[(env, b)]);
    assert_eq!(read(&effective(&flag_env)).as_deref(), Some(c), "flag {flag} must win over {env} without a file");
    let none = check(&[], &[]);
    assert_eq!(read(&effective(&none)).as_deref(), default, "built-in default of {flag}");
}

#[test]
fn precedence_of_listen() {
    assert_precedence(
        "[client]\nlisten = \"127.0.0.1:7001\"\n",
        "RESPITE_LISTEN",
        "--listen",
        ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"),
        Some("127.0.0.1:6380"),
        |v| get(v, "client", "listen"),
    );
}

#[test]
fn precedence_of_upstream() {
    assert_precedence(
        "[upstream]\nurl = \"redis://127.0.0.1:7001/0\"\n",
        "RESPITE_UPSTREAM",
        "--upstream",
        ("redis://127.0.0.1:7001/0", "redis://127.0.0.1:7002/0", "redis://127.0.0.1:7003/0"),
        Some("redis://127.0.0.1:6379"),
        |v| get(v, "upstream", "url"),
    );
}

#[test]
fn precedence_of_admin_listen() {
    assert_precedence(
        "[admin]\nlisten = \"127.0.0.1:7001\"\n",
        "RESPITE_ADMIN_LISTEN",
        "--admin-listen",
        ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"),
        Some("127.0.0.1:9480"),
        |v| get(v, "admin", "listen"),
    );
}

#[test]
fn precedence_of_log_format() {
    // Only two formats: the file says json, the environment text, the flag json.
    let f = TempConfig::new("[log]\nformat = \"json\"\n");
    let read = |o: &Output| get(&effective(o), "log", "format");
    let o = check(&["--config", f.arg(), "--log-format", "json"], &[("RESPITE_LOG_FORMAT", "text")]);
    assert_eq!(read(&o).as_deref(), Some("json"), "flag wins over env");
    let o = check(&["--config", f.arg()], &[("RESPITE_LOG_FORMAT", "text")]);
    assert_eq!(read(&o).as_deref(), Some("text"), "env wins over file");
    let o = check(&["--config", f.arg()], &[]);
    assert_eq!(read(&o).as_deref(), Some("json"), "file wins over default");
    let o = check(&["--log-format", "text"], &[("RESPITE_LOG_FORMAT", "json")]);
    assert_eq!(read(&o).as_deref(), Some("text"), "flag wins over env");
    let o = check(&[], &[("RESPITE_LOG_FORMAT", "json")]);
    assert_eq!(read(&o).as_deref(), Some("json"), "env wins over default");
    let o = check(&[], &[]);
    assert_eq!(read(&o).as_deref(), Some("text"), "default");
}

#[test]
fn precedence_of_log_level() {
    assert_precedence(
        "[log]\nlevel = \"warn\"\n",
        "RESPITE_LOG_LEVEL",
        "--log-level",
        ("warn", "debug", "error"),
        Some("info"),
        |v| get(v, "log", "level"),
    );
}

#[test]
fn precedence_of_journal_dir() {
    assert_precedence(
        "[journal]\ndir = \"/tmp/respite-journal-a\"\n",
        "RESPITE_JOURNAL_DIR",
        "--journal-dir",
        ("/tmp/respite-journal-a", "/tmp/respite-journal-b", "/tmp/respite-journal-c"),
        None,
        |v| get(v, "journal", "dir"),
    );
}

#[test]
fn respite_config_env_selects_the_file() {
    let f = TempConfig::new("[client]\nlisten = \"127.0.0.1:7011\"\n");
    let o = check(&[], &[("RESPITE_CONFIG", f.arg())]);
    assert_eq!(get(&effective(&o), "client", "listen").as_deref(), Some("127.0.0.1:7011"));
    // --config wins over RESPITE_CONFIG.
    let g = TempConfig::new("[client]\nlisten = \"127.0.0.1:7012\"\n");
    let o = check(&["--config", g.arg()], &[("RESPITE_CONFIG", f.arg())]);
    assert_eq!(get(&effective(&o), "client", "listen").as_deref(), Some("127.0.0.1:7012"));
    // An unknown key in the file selected by the environment is still an error.
    let bad = TempConfig::new("[client]\nmax_conections = 5\n");
    let o = check(&[], &[("RESPITE_CONFIG", bad.arg())]);
    assert_config_error(&o, &["max_conections"]);
}

// ---------------------------------------------------------------------------------------
// 5. Secrets never appear in check-config output.

const SECRETS: [&str; 3] = ["hunter2", "hunter3", "hunter4"];

fn assert_redacted(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", both(o));
    let text = both(o);
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} printed:\n{text}");
    }
    assert!(text.contains("<redacted>"), "no <redacted> marker:\n{text}");
}

#[test]
fn secrets_in_the_file_are_redacted() {
    let f = TempConfig::new(
        "[client]\nrequirepass = \"hunter3\"\n\
         [upstream]\nurl = \"redis://user:hunter2@127.0.0.1:1/0\"\n\
         [admin]\ntoken = \"hunter4\"\n",
    );
    let o = check(&["--config", f.arg()], &[]);
    assert_redacted(&o);
    let v = effective(&o);
    assert_eq!(get(&v, "client", "requirepass").as_deref(), Some("<redacted>"));
    assert_eq!(get(&v, "admin", "token").as_deref(), Some("<redacted>"));
    let url = get(&v, "upstream", "url").unwrap();
    assert!(url.contains("user") && url.contains("<redacted>") && url.contains("127.0.0.1:1"), "{url}");
}

#[test]
fn password_hashes_of_client_users_are_redacted() {
    // printf %s hunter2 | sha256sum: a weak password's hash is as good as the password.
    let hash = "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7";
    let f = TempConfig::new(&format!("[[client.users]]\nname = \"app\"\npassword_sha256 = \"{hash}\"\n"));
    let o = check(&["--config", f.arg()], &[]);
    assert_redacted(&o);
    assert!(!both(&o).contains(hash), "{}", both(&o));
    let users = effective(&o)["client"]["users"].clone();
    assert_eq!(users[0]["name"].as_str(), Some("app"), "{users}");
    assert_eq!(users[0]["password_sha256"].as_str(), Some("<redacted>"), "{users}");
}

#[test]
fn secrets_from_flags_and_env_are_redacted() {
    let f = TempConfig::new("[client]\nrequirepass = \"hunter3\"\n[admin]\ntoken = \"hunter4\"\n");
    let o = check(&["--config", f.arg(), "--upstream", "redis://user:hunter2@127.0.0.1:1/0"], &[]);
    assert_redacted(&o);
    let o = check(&["--config", f.arg()], &[("RESPITE_UPSTREAM", "redis://user:hunter2@127.0.0.1:1/0")]);
    assert_redacted(&o);
}

#[test]
fn secrets_are_redacted_in_error_messages() {
    // A URL that is invalid for another reason still does not leak its password.
    let o = check(&["--upstream", "redis://user:hunter2@127.0.0.1:1/abc"], &[]);
    assert_config_error(&o, &["upstream.url"]);
    assert!(!both(&o).contains("hunter2"), "{}", both(&o));
    let o = check(&["--upstream", "http://user:hunter2@127.0.0.1:1/0"], &[]);
    assert_config_error(&o, &["scheme"]);
    assert!(!both(&o).contains("hunter2"), "{}", both(&o));
    // Malformed URLs: the password is hidden whatever the shape.
    for url in [
        "redis:/alice:hunter2@10.0.0.1:6379",
        "alice:hunter2@host:6379",
        "redis:alice:hunter2@host",
        "redis//:hunter2@host",
    ] {
        let o = check(&["--upstream", url], &[]);
        assert_config_error(&o, &["upstream.url", "<redacted>"]);
        assert!(!both(&o).contains("hunter2"), "{}", both(&o));
    }
}

#[test]
fn a_file_that_does_not_parse_is_reported_without_its_values() {
    for (text, key) in [
        ("[client]\nrequirepasss = \"hunter2\"\n", "client.requirepasss"),
        ("[upstream]\nurl = redis://app:hunter2@10.0.0.1:6379\n", "upstream.url"),
        ("[admin]\ntoken = \"hunter2\n", "admin.token"),
        ("[client]\nrequirepass = 12345678\n", "client.requirepass"),
    ] {
        let f = TempConfig::new(text);
        let o = check(&["--config", f.arg()], &[]);
        assert_config_error(&o, &["line 2", key]);
        // The server reports it the same way at start.
        let mut cmd = respite_cmd();
        cmd.args(["--config", f.arg(), "--listen", &format!("127.0.0.1:{}", free_port())]);
        let server = run(cmd);
        assert_config_error(&server, &["line 2", key]);
        for out in [both(&o), both(&server)] {
            assert!(!out.contains("hunter2") && !out.contains("12345678"), "a value of the file printed:\n{out}");
        }
    }
}

#[test]
fn help_does_not_show_environment_values() {
    let mut cmd = respite_cmd();
    cmd.arg("--help");
    for v in RESPITE_ENV {
        cmd.env(v, format!("redis://app:hunter2@10.0.0.1:6379/{v}"));
    }
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let text = both(&o);
    assert!(text.contains("RESPITE_UPSTREAM"), "the variable is named:\n{text}");
    assert!(!text.contains("hunter2"), "an environment value shown:\n{text}");
}

#[test]
fn rediss_with_an_unreadable_ca_file_fails_naming_the_key_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("respite.toml");
    std::fs::write(&file, "[upstream.tls]\nca_file = \"/nonexistent/ca.pem\"\n").unwrap();
    let o = check(&["--config", file.to_str().unwrap(), "--upstream", "rediss://user:hunter2@127.0.0.1:1/0"], &[]);
    assert_config_error(&o, &["upstream.tls.ca_file", "/nonexistent/ca.pem", "cannot read"]);
    assert!(!both(&o).contains("hunter2"), "{}", both(&o));
    // Without a CA file, the built-in roots: valid.
    let o = check(&["--upstream", "rediss://user:hunter2@127.0.0.1:1/0"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(!both(&o).contains("hunter2"), "{}", both(&o));
}

// ---------------------------------------------------------------------------------------
// 6. The repository's config.toml is valid.

#[test]
fn repository_config_toml_passes_check_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let o = check(&["--config", path.to_str().unwrap()], &[]);
    let v = effective(&o);
    assert_defaults(&v);
}

// ---------------------------------------------------------------------------------------
// 7. The server starts, is ready without an upstream, and exits 0 on SIGTERM.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_starts_without_upstream_is_ready_and_exits_0_on_sigterm() {
    let dead = free_port();
    let mut s = Server::start(&format!("redis://127.0.0.1:{dead}"), &[]);
    let port = s.port;
    let got = tokio::task::spawn_blocking(move || redis_cli(port, &["GET", "never-seen"])).await.unwrap();
    assert!(
        got.contains("UNAVAILABLE"),
        "GET of an unseen key without an upstream must get an UNAVAILABLE error, got {got:?}"
    );
    let (code, body) = http(s.admin(), "GET", "/readyz", None, None).await;
    assert_eq!(code, 200, "/readyz while the upstream is down: {body}");
    let (code, _) = http(s.admin(), "GET", "/healthz", None, None).await;
    assert_eq!(code, 200);
    s.sigterm();
    let status = s.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; stderr:\n{}", s.stderr_text());
}

// ---------------------------------------------------------------------------------------
// 8. Graceful drain: an in-flight blocking command finishes after SIGTERM.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_blpop_finish_then_exits_0() {
    let redis = RedisServer::start();
    let cfg = TempConfig::new("[shutdown]\ngrace_period = \"5s\"\n");
    let mut s = Server::start(&redis.url(), &["--config", cfg.arg()]);
    let mut direct = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    let mut blocked = Raw::connect(([127, 0, 0, 1], s.port).into()).await;
    let started = Instant::now();
    blocked.cmd(&[b"BLPOP", b"drain:list", b"3"]).await;

    // Wait until the BLPOP is really blocked upstream (bounded), and at least 200ms.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let info: String = redis::cmd("INFO").arg("clients").query_async(&mut direct).await.unwrap();
        if info.contains("blocked_clients:1") {
            break;
        }
        assert!(Instant::now() < deadline, "BLPOP never blocked upstream: {info}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let since = started.elapsed();
    if since < Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(200) - since).await;
    }
    s.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: i64 = redis::cmd("RPUSH").arg("drain:list").arg("v").query_async(&mut direct).await.unwrap();

    let reply = blocked.reply_within(Duration::from_secs(4)).await;
    assert_eq!(
        reply.as_deref().map(String::from_utf8_lossy),
        Some("*2\r\n$10\r\ndrain:list\r\n$1\r\nv\r\n".into()),
        "the blocked client must get its BLPOP reply after SIGTERM; stderr:\n{}",
        s.stderr_text()
    );
    drop(blocked);
    let status = s.wait_exit(Duration::from_secs(6));
    assert_eq!(status.code(), Some(0), "exit status after drain; stderr:\n{}", s.stderr_text());
    // The value was popped exactly once.
    let len: i64 = redis::cmd("LLEN").arg("drain:list").query_async(&mut direct).await.unwrap();
    assert_eq!(len, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_new_clients() {
    let redis = RedisServer::start();
    let cfg = TempConfig::new("[shutdown]\ngrace_period = \"5s\"\n");
    let mut s = Server::start(&redis.url(), &["--config", cfg.arg()]);
    // Keep a session open with an in-flight BLPOP so that shutdown has something to drain.
    let mut blocked = Raw::connect(([127, 0, 0, 1], s.port).into()).await;
    blocked.cmd(&[b"BLPOP", b"drain:other", b"2"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.sigterm();
    // New connections are refused (or closed without service) while draining.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await {
            Err(_) => break,
            Ok(stream) => drop(stream),
        }
        assert!(Instant::now() < deadline, "the client listener still accepts connections 2s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = blocked.reply_within(Duration::from_secs(4)).await;
    assert_eq!(reply.as_deref(), Some(&b"*-1\r\n"[..]), "the BLPOP times out normally");
    let status = s.wait_exit(Duration::from_secs(6));
    assert_eq!(status.code(), Some(0), "{}", s.stderr_text());
}

// ---------------------------------------------------------------------------------------
// 9. JSON logs: every line of stderr is a JSON object.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_only_json_lines() {
    let redis = RedisServer::start();
    let mut s = Server::start(&redis.url(), &["--log-format", "json"]);
    // Some traffic, then shutdown.
    let port = s.port;
    let out = tokio::task::spawn_blocking(move || redis_cli(port, &["SET", "k", "v"])).await.unwrap();
    assert_eq!(out.trim(), "OK");
    s.sigterm();
    let status = s.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    let text = s.stderr_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "expected start-up and shutdown log lines, got:\n{text}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line:?}\nall:\n{text}"));
        assert!(v.is_object(), "stderr line is not a JSON object: {line}");
    }
    assert!(
        text.contains("respite started") && text.contains("respite stopped"),
        "start-up and shutdown are logged:\n{text}"
    );
    assert!(s.stdout_text().trim().is_empty(), "nothing on stdout: {}", s.stdout_text());
}

// ---------------------------------------------------------------------------------------
// 10. Logs never show keys or values.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_write_the_upstream_refuses_is_logged_without_its_key_or_value() {
    // The upstream does not know APPEND (renamed away, as managed Redis does with some
    // commands, or an older version without a command respite journals): Redis's error
    // then quotes the command's first arguments ("with args beginning with: 'key'
    // 'value'"), and the replayer logs that error when it skips the record.
    let redis = RedisServer::start_with(&["--rename-command", "APPEND", ""]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respite.toml");
    std::fs::write(&config, "[admin]\ntoken = \"t\"\n[health]\nprobe_interval = \"50ms\"\n").unwrap();
    let mut s = Server::start(&redis.url(), &["--config", config.to_str().unwrap(), "--log-format", "json"]);
    let admin = s.admin();
    let (code, body) = http(admin, "POST", "/admin/drill", Some("t"), Some(r#"{"state":"down"}"#)).await;
    assert_eq!(code, 200, "{body}");
    let key = "customer:4711:private-key";
    let value = "private-value-0815";
    let mut c = Raw::connect(([127, 0, 0, 1], s.port).into()).await;
    let reply = c.call(&[b"APPEND", key.as_bytes(), value.as_bytes()]).await;
    assert!(reply.starts_with(b":"), "APPEND journaled during the drill: {:?}", String::from_utf8_lossy(&reply));
    let (code, body) = http(admin, "POST", "/admin/drill", Some("t"), Some(r#"{"state":"auto"}"#)).await;
    assert_eq!(code, 200, "{body}");
    wait_status(admin, "the refused record skipped", Duration::from_secs(10), |st| {
        st["state"] == "healthy" && st["journal"]["entries"] == 0 && st["replay"]["errors_total"] == 1
    })
    .await;
    drop(c);
    s.sigterm();
    assert_eq!(s.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let logs = format!("{}{}", s.stdout_text(), s.stderr_text());
    assert!(logs.contains("record refused by the upstream"), "the skipped record is logged:\n{logs}");
    assert!(!logs.contains("private-key"), "a key in the logs:\n{logs}");
    assert!(!logs.contains(value), "a value in the logs:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_upstream_keeps_refusing_is_logged_once_not_every_second() {
    // An upstream out of memory refuses the replay for as long as it lasts (hours, maybe);
    // the replayer retries every second. One "replay started" and one refusal line, not two
    // lines a second (the metrics and RespiteReplayStalled tell how long it goes on).
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respite.toml");
    std::fs::write(&config, "[admin]\ntoken = \"t\"\n[health]\nprobe_interval = \"50ms\"\n").unwrap();
    let mut s = Server::start(&redis.url(), &["--config", config.to_str().unwrap()]);
    let admin = s.admin();
    let (code, body) = http(admin, "POST", "/admin/drill", Some("t"), Some(r#"{"state":"down"}"#)).await;
    assert_eq!(code, 200, "{body}");
    let mut c = Raw::connect(([127, 0, 0, 1], s.port).into()).await;
    assert_eq!(c.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    let port = redis.port;
    let config_set =
        move |v: &'static str| tokio::task::spawn_blocking(move || redis_cli(port, &["CONFIG", "SET", "maxmemory", v]));
    redis_cli(port, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    assert_eq!(config_set("1").await.unwrap().trim(), "OK");
    let (code, body) = http(admin, "POST", "/admin/drill", Some("t"), Some(r#"{"state":"auto"}"#)).await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_, body) = http(admin, "GET", "/metrics", None, None).await;
    let errors = metric_value(&body, "respite_journal_replay_errors_total").unwrap();
    assert!(errors >= 3.0, "the replay was retried (and refused) every second: {errors}");
    assert_eq!(config_set("0").await.unwrap().trim(), "OK");
    wait_status(admin, "the journal replayed", Duration::from_secs(10), |st| {
        st["state"] == "healthy" && st["journal"]["entries"] == 0
    })
    .await;
    drop(c);
    s.sigterm();
    assert_eq!(s.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let logs = s.stderr_text();
    let count = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("replay started"), 1, "one replay, started once:\n{logs}");
    assert_eq!(count("replay refused by the upstream"), 1, "the same refusal, logged once:\n{logs}");
    assert_eq!(count("replay finished"), 1, "{logs}");
}
