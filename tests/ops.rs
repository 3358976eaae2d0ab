//! Operations: the metrics catalogue against the README, the Kubernetes manifests against
//! Kubernetes schemas and `respite check-config`, and every metric the alerts and the
//! dashboard query against what a running respite really exports.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TOKEN: &str = "ops-token";
/// A key name that must never show up in `/metrics`.
const SECRET_KEY: &str = "private-key-name-5309";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// A running respite whose every metric family has samples.

async fn send(r: &mut Raw, line: &str) -> String {
    let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    String::from_utf8_lossy(&r.call(&args).await).into_owned()
}

async fn drill(respite: &Respite, state: &str) {
    let (code, body) = respite.http_post("/admin/drill", Some(TOKEN), &format!("{{\"state\":\"{state}\"}}")).await;
    assert_eq!(code, 200, "drill {state}: {body}");
}

/// Reads until the peer closes (or 3 s pass); whether it closed.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Healthy traffic, a rejected and a malformed client, then an outage drill with hits,
/// misses, refusals and a full journal, then the replay; returns the `/metrics` text.
async fn exercised_metrics() -> String {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.token = TOKEN.into();
    cfg.client.max_connections = 2;
    cfg.journal.max_entries = 3;
    let respite = Respite::start_with(cfg).await;

    // Healthy: forwarded commands, an error reply, an unknown command; the store warms.
    let mut r = Raw::connect(respite.addr).await;
    assert_eq!(send(&mut r, &format!("SET {SECRET_KEY} v")).await, "+OK\r\n");
    assert_eq!(send(&mut r, &format!("GET {SECRET_KEY}")).await, "$1\r\nv\r\n");
    assert!(send(&mut r, &format!("INCR {SECRET_KEY}")).await.starts_with('-'));
    assert!(send(&mut r, "NOSUCHCOMMAND x").await.starts_with("-ERR"));

    // A client that sends garbage, and one too many.
    let mut bad = TcpStream::connect(respite.addr).await.unwrap();
    bad.write_all(b"*1\r\n$abc\r\n").await.unwrap();
    assert!(closed_by_peer(&mut bad).await, "a malformed request closes the connection");
    drop(bad);
    let deadline = Instant::now() + Duration::from_secs(3);
    while respite.metric("respite_client_connections").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the malformed client's slot is not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = Raw::connect(respite.addr).await;
    assert_eq!(send(&mut second, "PING").await, "+PONG\r\n");
    let mut third = TcpStream::connect(respite.addr).await.unwrap();
    assert!(closed_by_peer(&mut third).await, "the third client is over max_connections");
    drop(second);

    // Outage drill: a hit, a miss, refusals, three journaled writes and a full journal.
    drill(&respite, "down").await;
    respite.wait_state("down", Duration::from_secs(5)).await;
    assert_eq!(send(&mut r, &format!("GET {SECRET_KEY}")).await, "$1\r\nv\r\n");
    assert!(send(&mut r, "GET never-seen").await.starts_with("-UNAVAILABLE"));
    assert!(send(&mut r, "EVAL return 0").await.starts_with('-'));
    assert!(send(&mut r, "SET lock 1 NX").await.starts_with('-'));
    for i in 1..=3 {
        assert_eq!(send(&mut r, &format!("SET j{i} v")).await, "+OK\r\n");
    }
    assert!(send(&mut r, "SET j4 v").await.starts_with("-OOM"));

    // Recovery: replaying, then healthy with the journal confirmed upstream.
    drill(&respite, "auto").await;
    wait_status(respite.admin, "the journal replayed", Duration::from_secs(10), |s| {
        s["state"] == "healthy" && s["journal"]["entries"] == 0
    })
    .await;
    assert_eq!(redis_cli(redis.port, &["GET", "j3"]).trim(), "v");
    let (code, body) = respite.http_get("/metrics").await;
    assert_eq!(code, 200);
    drop(r);
    respite.shutdown().await;
    body
}

/// One family of the exposition: its type and samples (suffix, labels, value).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the text exposition format (as the prometheus crate writes it).
fn parse_exposition(body: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            families.entry(name.to_string()).or_default().kind = kind.to_string();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let labels: BTreeMap<String, String> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("sample value of {line:?}"));
        let (family, suffix) = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (families.get(base).is_some_and(|f| f.kind == "histogram")).then_some((base, *s))
            })
            .unwrap_or((name, ""));
        families.entry(family.to_string()).or_default().samples.push((suffix.to_string(), labels, value));
    }
    families
}

// ---------------------------------------------------------------------------------------
// The README's Metrics table.

/// One row of the README's Metrics table.
#[derive(Debug)]
struct Documented {
    kind: String,
    /// Label names, with their allowed values where the README enumerates them.
    labels: BTreeMap<String, Option<BTreeSet<String>>>,
}

/// Backticked words of `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Parses a labels cell like "`result` (`ok`, `error`), `outcome`": label names outside
/// parentheses; a parenthesis made only of backticked words enumerates the values.
fn parse_labels_cell(cell: &str) -> BTreeMap<String, Option<BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    let mut rest = cell.trim();
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let end = after.find('`').expect("closed backtick");
        let name = after[..end].to_string();
        rest = after[end + 1..].trim_start();
        let mut values = None;
        if let Some(inner) = rest.strip_prefix('(') {
            let close = inner.find(')').expect("closed parenthesis");
            let words = &inner[..close];
            let listed = backticked(words);
            let only_words = words.split(',').all(|w| {
                let w = w.trim();
                w.len() > 2 && w.starts_with('`') && w.ends_with('`') && !w[1..w.len() - 1].contains('`')
            });
            if only_words {
                values = Some(listed.into_iter().collect());
            }
            rest = &inner[close + 1..];
        }
        out.insert(name, values);
    }
    out
}

fn readme_metrics() -> BTreeMap<String, Documented> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("\n## Metrics\n").expect("README has a \"## Metrics\" section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map(|i| i + 3).unwrap_or(section.len())];
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `respite_")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 4, "README Metrics row has name | type | labels | meaning: {line}");
        let name = cells[0].trim_matches('`').to_string();
        let labels = if cells[2] == "—" { BTreeMap::new() } else { parse_labels_cell(cells[2]) };
        let doc = Documented { kind: cells[1].to_string(), labels };
        assert!(out.insert(name.clone(), doc).is_none(), "README documents {name} twice");
    }
    assert!(!out.is_empty(), "no metric rows in README's Metrics section");
    out
}

// ---------------------------------------------------------------------------------------
// 1. The catalogue.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_family_is_in_the_readme_and_every_documented_one_is_exported() {
    let body = exercised_metrics().await;
    let exported = parse_exposition(&body);
    let documented = readme_metrics();
    let mut problems = Vec::new();

    for (name, f) in &exported {
        if f.samples.is_empty() {
            problems.push(format!("{name}: TYPE line but no sample"));
        }
        if !documented.contains_key(name) {
            problems.push(format!("{name} is exported but not in README's Metrics table"));
        }
    }
    for name in documented.keys() {
        if !exported.contains_key(name) {
            problems.push(format!("{name} is in README's Metrics table but not exported (after traffic and a drill)"));
        }
    }

    for (name, f) in &exported {
        // Prometheus conventions.
        if !name.starts_with("respite_") || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            problems.push(format!("{name}: not respite_ followed by lower-case words"));
        }
        match f.kind.as_str() {
            "counter" if !name.ends_with("_total") => problems.push(format!("{name}: a counter must end in _total")),
            "histogram" if !name.ends_with("_seconds") => {
                problems.push(format!("{name}: histograms here measure time and end in _seconds"))
            }
            "counter" | "histogram" | "gauge" => {}
            other => problems.push(format!("{name}: unexpected type {other}")),
        }
        if f.kind != "counter" && name.ends_with("_total") {
            problems.push(format!("{name}: only counters end in _total"));
        }
        for unit in ["_ms", "_milliseconds", "_us", "_microseconds", "_kb", "_mb", "_kib", "_mib", "_minutes", "_hours"]
        {
            if name.contains(&format!("{unit}_")) || name.ends_with(unit) {
                problems.push(format!("{name}: not in base units (seconds, bytes)"));
            }
        }
        if f.kind == "histogram" {
            let bounds: Vec<f64> = f
                .samples
                .iter()
                .filter(|(s, _, _)| s == "_bucket")
                .filter_map(|(_, l, _)| l.get("le")?.parse().ok())
                .collect();
            let finite: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
            let lowest = finite.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = finite.iter().copied().fold(0.0, f64::max);
            if !(lowest <= 0.0001 && highest >= 1.0 && bounds.iter().any(|b| b.is_infinite())) {
                problems.push(format!("{name}: buckets must reach from tens of µs to seconds, have {bounds:?}"));
            }
        }

        // The README row agrees: type, label names, enumerated label values.
        let Some(doc) = documented.get(name) else { continue };
        if doc.kind != f.kind {
            problems.push(format!("{name}: README says {}, /metrics says {}", doc.kind, f.kind));
        }
        let seen: BTreeSet<&String> =
            f.samples.iter().flat_map(|(_, l, _)| l.keys()).filter(|k| k.as_str() != "le").collect();
        let listed: BTreeSet<&String> = doc.labels.keys().collect();
        if seen != listed {
            problems.push(format!("{name}: labels {seen:?} exported, {listed:?} in README"));
        }
        for (_, labels, _) in &f.samples {
            for (label, value) in labels {
                if let Some(Some(allowed)) = doc.labels.get(label) {
                    if !allowed.contains(value) {
                        problems.push(format!("{name}: {label}=\"{value}\" is not among README's {allowed:?}"));
                    }
                }
            }
        }
    }

    // Bounded labels: values come from fixed sets, never from keys or client input.
    for (name, f) in &exported {
        for (_, labels, _) in &f.samples {
            for (label, value) in labels {
                let ok = match label.as_str() {
                    "command" => value.bytes().all(|b| b.is_ascii_lowercase() || b == b'|' || b == b'-'),
                    "outcome" => ["ok", "error", "timeout", "unavailable", "unknown", "refused", "local"]
                        .contains(&value.as_str()),
                    "state" | "from" | "to" => ["healthy", "degraded", "down", "replaying"].contains(&value.as_str()),
                    _ => value.len() <= 40,
                };
                if !ok {
                    problems.push(format!("{name}: unbounded or unexpected {label}=\"{value}\""));
                }
            }
        }
    }
    assert!(!body.contains(SECRET_KEY), "a key name appears in /metrics");
    assert!(!body.to_ascii_lowercase().contains("nosuchcommand"), "a client's command name appears in /metrics");
    assert!(problems.is_empty(), "{}\n\n/metrics:\n{body}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 2. Alerts and dashboard query only families respite exports.

/// Files under `dir` (recursively) whose names end with one of `exts`.
fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path, exts));
        } else if exts.iter().any(|e| path.extension().is_some_and(|x| x == *e)) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every `respite_[a-z_]+` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("respite_").map(|p| p + i) {
        let word_start = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let mut end = at + "respite_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if word_start && end > at + "respite_".len() {
            out.insert(text[at..end].trim_end_matches('_').to_string());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_metrics_respite_exports() {
    let body = exercised_metrics().await;
    let exported = parse_exposition(&body);
    let files = files_under(&repo().join("k8s"), &["yaml", "yml", "json"]);
    assert!(!files.is_empty());
    let mut problems = Vec::new();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let rel = path.strip_prefix(repo()).unwrap().display().to_string();
        for name in metric_names(&text) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    exported.get(base).is_some_and(|f| f.kind == "histogram").then(|| base.to_string())
                })
                .unwrap_or(name.clone());
            if !exported.contains_key(&family) {
                problems.push(format!("{rel} names {name}, which respite does not export"));
            }
            used.entry(rel.clone()).or_default().insert(name);
        }
    }
    // What the alerts and the dashboard must show.
    let rules = used.get("k8s/base/prometheusrule.yaml").cloned().unwrap_or_default();
    for needed in [
        "respite_upstream_state",
        "respite_journal_entries",
        "respite_journal_bytes",
        "respite_journal_replayed_total",
        "respite_outage_refused_total",
    ] {
        if !rules.contains(needed) {
            problems.push(format!("k8s/base/prometheusrule.yaml does not use {needed}"));
        }
    }
    let dashboard = used.get("k8s/base/respite-dashboard.json").cloned().unwrap_or_default();
    for needed in [
        "respite_upstream_state",
        "respite_commands_total",
        "respite_command_duration_seconds_bucket",
        "respite_store_hits_total",
        "respite_store_misses_total",
        "respite_journal_entries",
        "respite_journal_oldest_age_seconds",
        "respite_journal_replayed_total",
    ] {
        if !dashboard.contains(needed) {
            problems.push(format!("k8s/base/respite-dashboard.json does not use {needed}"));
        }
    }
    assert!(problems.is_empty(), "{}\n\nnames used: {used:#?}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 3. Kubernetes schemas, and the example's configuration and command line.

/// The Python with kubernetes-validate and promql-parser: `RESPITE_OPS_PYTHON`, or the
/// virtual environment scripts/test.sh makes in target/ops-venv.
fn ops_python() -> PathBuf {
    if let Some(p) = std::env::var_os("RESPITE_OPS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join("target/ops-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test.sh, which installs kubernetes-validate and promql-parser there \
         (or set RESPITE_OPS_PYTHON to a python that has them). The manifests are not validated without it.",
        venv.display()
    );
    venv
}

#[test]
fn k8s_manifests_pass_schema_validation_and_their_config_passes_check_config() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(ops_python())
        .arg(repo().join("k8s/validate.py"))
        .arg("--emit")
        .arg(out_dir.path())
        .output()
        .expect("run k8s/validate.py");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "k8s/validate.py failed:\n{report}");
    assert!(report.contains("PrometheusRule/respite") && report.contains("PodMonitor/respite"), "{report}");

    // The ConfigMap's config.toml with the container's exact flags; only the paths move
    // to this machine (the journal directory would be created by a real start).
    let args: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("respite-args.json")).unwrap()).unwrap();
    let config = out_dir.path().join("config.toml");
    let journal = out_dir.path().join("journal");
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            if a.starts_with("--config=") {
                format!("--config={}", config.display())
            } else if a.starts_with("--journal-dir=") {
                format!("--journal-dir={}", journal.display())
            } else {
                a
            }
        })
        .collect();
    assert!(args.iter().any(|a| a.starts_with("--listen=")), "{args:?}");
    let out = Command::new(respite_bin())
        .arg("check-config")
        .args(&args)
        .env("RESPITE_UPSTREAM", "redis://default:change-me@redis.example:6379/0")
        .output()
        .expect("run respite check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-config {args:?} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("max_entries = 200000"), "the ConfigMap's values are in effect:\n{stdout}");
    assert!(!stdout.contains("change-me"), "check-config printed the upstream password:\n{stdout}");
}
