//! The monitoring files shipped in `deploy/` against the daemon that feeds them:
//!
//! - `deploy/prometheus/tandem-alerts.yml` passes `promtool check rules`, and its unit tests
//!   (`tandem-alerts.test.yml`, every rule firing and quiet on synthetic series) pass
//!   `promtool test rules`; every alert has a test.
//! - every PromQL query of the rules and of `deploy/grafana/tandem-dashboard.json` is valid
//!   PromQL (the dashboard's queries, Grafana variables filled in, checked by promtool as recording
//!   rules), and names only metrics and labels that a running daemon really exports: two daemons in
//!   a scratch namespace, tunnels Up, one real scrape of `/metrics`. Fail closed: an unknown
//!   metric, label or drop reason fails, and so does a scrape without samples.
//!
//! promtool comes from Debian's `prometheus` package. Without it (or without root, for the
//! scrape) the tests skip loudly, except under CI (`CI` set), where they fail.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

mod support;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::is_root;
use support::lab::Lab;

/// Series Prometheus itself adds: `up` for every scrape target, `ALERTS` for every pending or
/// firing alert. The rules and the dashboard may use these besides the daemon's own.
const PROMETHEUS_SERIES: [&str; 2] = ["up", "ALERTS"];
/// Labels Prometheus attaches: target labels and the labels of `ALERTS` (`severity` is ours,
/// from the rules file).
const PROMETHEUS_LABELS: [&str; 5] = ["job", "instance", "alertname", "alertstate", "severity"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/tandem-alerts.yml")
}

fn rules_test_file() -> PathBuf {
    repo().join("deploy/prometheus/tandem-alerts.test.yml")
}

fn dashboard_file() -> PathBuf {
    repo().join("deploy/grafana/tandem-dashboard.json")
}

/// Outside CI: say loudly that `test` is skipped and why. Under CI: fail.
fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why} (required under CI)"
    );
    eprintln!("SKIPPING {test}: {why}");
}

fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip_or_fail(
            test,
            "promtool not found (apt-get install --no-install-recommends prometheus)",
        );
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// --- the rules file, read without a YAML parser ---------------------------------------------

/// `(alert name, expr)` for every rule. Understands what tandem-alerts.yml uses: `expr:` on one
/// line, or `expr: |` followed by more-indented lines. Asserts one expr per alert, so a rule
/// written in a shape this reader misses fails instead of going unchecked.
fn rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = None;
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            assert!(alert.is_none(), "alert without expr before line {}", i + 1);
            alert = Some(name.trim().to_owned());
        } else if let Some(e) = t.strip_prefix("expr:") {
            let name = alert
                .take()
                .unwrap_or_else(|| panic!("expr outside an alert, line {}", i + 1));
            let e = e.trim();
            let expr = if e == "|" || e == "|-" || e == ">-" {
                let indent = lines[i].len() - t.len();
                let mut body = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let ni = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && ni <= indent {
                        break;
                    }
                    body.push_str(next.trim());
                    body.push(' ');
                    i += 1;
                }
                body
            } else {
                e.to_owned()
            };
            out.push((name, expr));
        }
        i += 1;
    }
    assert!(alert.is_none(), "the last alert has no expr");
    out
}

// --- the dashboard ----------------------------------------------------------------------------

/// Every query of the dashboard: panel targets' `expr` (rows nest panels) and the templating
/// variables' queries. Variables use Grafana's `label_values(SELECTOR, LABEL)`, returned as
/// `(SELECTOR, Some(LABEL))`.
fn dashboard_queries() -> Vec<(String, Option<String>)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&v["panels"], &mut exprs);
    let mut out: Vec<_> = exprs.into_iter().map(|e| (e, None)).collect();
    for var in v["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", var["name"]));
        let (sel, label) = inner.rsplit_once(',').unwrap();
        out.push((sel.trim().to_owned(), Some(label.trim().to_owned())));
    }
    out
}

/// A dashboard query with Grafana's variables replaced by values Prometheus accepts.
fn fill_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$connection", ".*")
}

// --- a small PromQL reader ----------------------------------------------------------------------

/// What a query refers to.
#[derive(Debug, Default, PartialEq)]
struct Refs {
    /// Metric names (selectors, bare or with matchers).
    metrics: BTreeSet<String>,
    /// `(metric, label, op, value)` for every matcher inside `{...}`.
    matchers: Vec<(String, String, String, String)>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right` lists.
    grouping: BTreeSet<String>,
}

/// Keywords and operators that look like identifiers.
const KEYWORDS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "atan2"];
/// Followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Reads the names out of a PromQL expression: strings, ranges (`[5m]`), numbers and Grafana
/// variables are skipped; an identifier followed by `(` is a function; anything else is a metric
/// name. Conservative in the direction that matters: an identifier it does not understand is
/// reported as a metric name, which then fails the check unless the daemon exports it.
fn promql_refs(expr: &str) -> Refs {
    let s: Vec<char> = expr.chars().collect();
    let mut refs = Refs::default();
    let mut i = 0;
    let mut last_metric = String::new();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut j: usize| {
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let read_string = |j: usize| -> (String, usize) {
        let q = s[j];
        let mut k = j + 1;
        let mut v = String::new();
        while k < s.len() && s[k] != q {
            if s[k] == '\\' && k + 1 < s.len() {
                k += 1;
            }
            v.push(s[k]);
            k += 1;
        }
        (v, k + 1)
    };
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = read_string(i).1;
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if i < s.len() && s[i] == '{' {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && i + 1 < s.len() && s[i + 1].is_ascii_digit()) {
            // Numbers, durations, 1e3, 0x1f.
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            // Matchers of the selector just read (or of no name: `{__name__=...}`).
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= s.len() || s[i] == '}' {
                    i += 1;
                    break;
                }
                if s[i] == ',' {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
                let label: String = s[start..i].iter().collect();
                i = skip_ws(i);
                let op_start = i;
                while i < s.len() && matches!(s[i], '=' | '!' | '~') {
                    i += 1;
                }
                let op: String = s[op_start..i].iter().collect();
                i = skip_ws(i);
                assert!(
                    !label.is_empty() && !op.is_empty() && i < s.len(),
                    "cannot read the matchers in {expr}"
                );
                let (value, next) = read_string(i);
                i = next;
                refs.matchers.push((last_metric.clone(), label, op, value));
            }
        } else if ident_start(c) {
            let start = i;
            while i < s.len() && ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let after = skip_ws(i);
            // A function call, or an aggregation with its grouping first: `sum by (l) (...)`.
            let next_word: String = s[after..].iter().take_while(|&&c| ident_char(c)).collect();
            let paren =
                after < s.len() && s[after] == '(' || next_word == "by" || next_word == "without";
            if LABEL_LISTS.contains(&word.as_str()) {
                if paren {
                    let mut j = after + 1;
                    while j < s.len() && s[j] != ')' {
                        if ident_start(s[j]) {
                            let ls = j;
                            while j < s.len() && ident_char(s[j]) {
                                j += 1;
                            }
                            refs.grouping.insert(s[ls..j].iter().collect());
                        } else {
                            j += 1;
                        }
                    }
                    i = j + 1;
                }
                last_metric.clear();
            } else if KEYWORDS.contains(&word.as_str()) || paren {
                last_metric.clear();
            } else {
                refs.metrics.insert(word.clone());
                last_metric = word;
            }
        } else {
            if !c.is_whitespace() {
                last_metric.clear();
            }
            i += 1;
        }
    }
    refs
}

// --- what a daemon exports ------------------------------------------------------------------

/// Metric name -> the label names and values seen on its samples.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Parse the Prometheus text format: sample lines only (a `# TYPE` without samples proves
/// nothing about the labels).
fn parse_exposition(text: &str) -> Exported {
    let mut out = Exported::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap()];
            let refs = promql_refs(&format!("x{{{body}}}"));
            for (_, label, _, value) in refs.matchers {
                labels.entry(label).or_default().insert(value);
            }
        }
    }
    out
}

/// Checks one query's references against the scrape; returns the problems found.
fn check_refs(what: &str, expr: &str, exported: &Exported) -> Vec<String> {
    let refs = promql_refs(expr);
    let mut problems = Vec::new();
    let all_labels: BTreeSet<&str> = exported
        .values()
        .flat_map(|l| l.keys().map(String::as_str))
        .chain(PROMETHEUS_LABELS)
        .collect();
    if refs.metrics.is_empty() {
        problems.push(format!("{what}: no metric in `{expr}`"));
    }
    for m in &refs.metrics {
        if !exported.contains_key(m) && !PROMETHEUS_SERIES.contains(&m.as_str()) {
            problems.push(format!(
                "{what}: metric `{m}` is not exported by the daemon"
            ));
        }
    }
    for (metric, label, op, value) in &refs.matchers {
        if PROMETHEUS_LABELS.contains(&label.as_str()) {
            continue;
        }
        let Some(values) = exported.get(metric).and_then(|l| l.get(label)) else {
            problems.push(format!(
                "{what}: `{metric}` has no label `{label}` in the scrape"
            ));
            continue;
        };
        // Values of our own enumerations (drop reasons): each alternative of an exact or a
        // plain `a|b` regex matcher must be one the daemon exports. Grafana variables and real
        // regexes are left alone.
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|');
        if label == "reason" && plain {
            for alt in value.split('|') {
                if !values.contains(alt) {
                    problems.push(format!(
                        "{what}: `{metric}{{{label}{op}\"{value}\"}}`: the daemon exports no {label} `{alt}`"
                    ));
                }
            }
        }
    }
    for l in &refs.grouping {
        if !all_labels.contains(l.as_str()) {
            problems.push(format!("{what}: grouping label `{l}` is not exported"));
        }
    }
    problems
}

// --- two daemons to scrape --------------------------------------------------------------------

/// A scratch namespace (loopback only) with two daemons whose two tunnels run over 127.0.0.1;
/// namespace, daemons and files are removed on drop, also when an assertion fails.
fn start_pair() -> Lab {
    let mut lab = Lab::new("mon", &[""]);
    lab.keys();
    let ns = lab.ns("");
    for (side, peer, local, remote, ports, metrics) in [
        (
            "a",
            "b",
            "10.211.1.0/24",
            "10.211.2.0/24",
            [(14501, 14511), (14502, 14512)],
            true,
        ),
        (
            "b",
            "a",
            "10.211.2.0/24",
            "10.211.1.0/24",
            [(14511, 14501), (14512, 14502)],
            false,
        ),
    ] {
        let cfg = lab.path(&format!("{side}.toml"));
        let metrics = if metrics {
            "metrics_listen = \"127.0.0.1:9810\"\n"
        } else {
            ""
        };
        std::fs::write(
            &cfg,
            format!(
                r#"[gateway]
private_key_file = "{side}.key"
tun_name = "tdmon{side}"

[control]
socket = "{side}.sock"
{metrics}
[[connection]]
name = "vpc"
peer_public_key_file = "{peer}.pub"
local_subnets = ["{local}"]
remote_subnets = ["{remote}"]
dpd_interval = "100ms"
dpd_timeout = "300ms"

[[connection.tunnel]]
name = "isp1"
local = "127.0.0.1:{l1}"
remote = "127.0.0.1:{r1}"
psk_file = "t1.psk"
priority = 1

[[connection.tunnel]]
name = "isp2"
local = "127.0.0.1:{l2}"
remote = "127.0.0.1:{r2}"
psk_file = "t2.psk"
priority = 2
"#,
                l1 = ports[0].0,
                r1 = ports[0].1,
                l2 = ports[1].0,
                r2 = ports[1].1,
            ),
        )
        .unwrap();
        lab.start(&ns, &cfg, &format!("{side}.log"));
    }
    lab
}

/// One GET /metrics from inside the pair's namespace; None while the endpoint is not there yet.
fn scrape(pair: &Lab) -> Option<String> {
    let ns = PathBuf::from(format!("/run/netns/{}", pair.ns("")));
    std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&ns).ok()?;
        let mut s = std::net::TcpStream::connect("127.0.0.1:9810").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    })
    .join()
    .unwrap()
}

/// A scrape of a daemon whose tunnels are both Up and have an RTT sample, so that every series
/// the daemon can export is in it.
fn full_scrape(pair: &Lab) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(body) = scrape(pair) {
            let up = body
                .lines()
                .filter(|l| l.starts_with("tandem_tunnel_up{") && l.ends_with(" 1"))
                .count();
            let rtt = body
                .lines()
                .filter(|l| l.starts_with("tandem_tunnel_rtt_seconds{"))
                .count();
            if up == 2 && rtt == 2 {
                return body;
            }
            last = Some(body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "no scrape with both tunnels Up and an RTT each within 30 s; last scrape:\n{}\n{}",
        last.unwrap_or_default(),
        pair.logs()
    );
}

// --- the tests ----------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = promtool("alert_rules_pass_promtool_check") else {
        return;
    };
    let out = run(Command::new(promtool)
        .args(["check", "rules"])
        .arg(rules_file()));
    let text = String::from_utf8_lossy(&out.stdout);
    let n = rules().len();
    assert!(
        text.contains(&format!("SUCCESS: {n} rules found")),
        "promtool found a different number of rules than the {n} alerts read here:\n{text}"
    );
}

#[test]
fn every_alert_rule_passes_its_promtool_unit_test() {
    let Some(promtool) = promtool("every_alert_rule_passes_its_promtool_unit_test") else {
        return;
    };
    let tests = std::fs::read_to_string(rules_test_file()).unwrap();
    for (alert, _) in rules() {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no test in {}",
            rules_test_file().display()
        );
    }
    // promtool resolves rule_files relative to the test file.
    run(Command::new(promtool)
        .args(["test", "rules"])
        .arg(rules_test_file()));
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool("dashboard_queries_are_valid_promql") else {
        return;
    };
    // Every panel query as a recording rule: promtool parses each one and reports the first
    // error with the rule's name.
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = dashboard_queries();
    for (i, (expr, _)) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&fill_grafana_variables(expr)).unwrap();
        yaml += &format!("      - record: dashboard:query_{i}\n        expr: {expr}\n");
    }
    let file = dir.path().join("dashboard.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = run(Command::new(promtool).args(["check", "rules"]).arg(&file));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn dashboard_and_rules_use_only_metrics_a_running_daemon_exports() {
    let test = "dashboard_and_rules_use_only_metrics_a_running_daemon_exports";
    if !is_root() {
        return skip_or_fail(test, "needs root (a network namespace and TUN devices)");
    }
    let pair = start_pair();
    let body = full_scrape(&pair);
    drop(pair);
    let exported = parse_exposition(&body);
    assert!(
        exported.len() >= 10 && exported.keys().all(|m| m.starts_with("tandem_")),
        "the scrape holds too few tandem_ series to check against:\n{body}"
    );
    println!(
        "the daemon exports: {}",
        exported.keys().cloned().collect::<Vec<_>>().join(" ")
    );

    let rules = rules();
    let queries = dashboard_queries();
    // Fail closed: a reader that finds nothing would pass everything.
    assert!(rules.len() >= 8, "only {} alert rules read", rules.len());
    assert!(
        queries.len() >= 15,
        "only {} dashboard queries read",
        queries.len()
    );

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (alert, expr) in &rules {
        problems.extend(check_refs(&format!("rule {alert}"), expr, &exported));
        used.extend(promql_refs(expr).metrics);
    }
    for (expr, label) in &queries {
        problems.extend(check_refs("dashboard", expr, &exported));
        used.extend(promql_refs(expr).metrics);
        if let Some(label) = label {
            let metrics = promql_refs(expr).metrics;
            for m in metrics {
                if !PROMETHEUS_LABELS.contains(&label.as_str())
                    && !exported.get(&m).is_some_and(|l| l.contains_key(label))
                {
                    problems.push(format!(
                        "dashboard variable: label_values({m}, {label}): no such label"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And the other way: the dashboard or the rules show every series the daemon exports.
    let unused: Vec<_> = exported.keys().filter(|m| !used.contains(*m)).collect();
    assert!(
        unused.is_empty(),
        "exported but in neither the dashboard nor the rules: {unused:?}"
    );
}

#[test]
fn the_promql_reader_finds_metrics_labels_and_matchers() {
    let r = promql_refs(
        r#"sum by (job, reason) (rate(tandem_dropped_packets_total{reason=~"auth|handshake", instance=~"$instance"}[$__rate_interval])) > 0.05
           and on (job) up{job="tandem"} offset 5m or vector(0) unless ALERTS"#,
    );
    assert_eq!(
        r.metrics.into_iter().collect::<Vec<_>>(),
        ["ALERTS", "tandem_dropped_packets_total", "up"]
    );
    assert_eq!(
        r.grouping.into_iter().collect::<Vec<_>>(),
        ["job", "reason"]
    );
    assert_eq!(
        r.matchers[0],
        (
            "tandem_dropped_packets_total".to_owned(),
            "reason".to_owned(),
            "=~".to_owned(),
            "auth|handshake".to_owned()
        )
    );
    assert_eq!(r.matchers[2].0, "up");
    // A misspelt name is a metric name, which the check then refuses.
    let exported = parse_exposition(
        "# TYPE tandem_tunnel_up gauge\ntandem_tunnel_up{connection=\"c\",tunnel=\"t\"} 1\n\
         tandem_dropped_packets_total{reason=\"auth\"} 0\n",
    );
    assert!(check_refs("t", "tandem_tunnel_up == 0", &exported).is_empty());
    assert_eq!(
        check_refs("t", "tandem_tunel_up == 0", &exported),
        ["t: metric `tandem_tunel_up` is not exported by the daemon"]
    );
    assert_eq!(
        check_refs("t", "sum by (conection) (tandem_tunnel_up)", &exported).len(),
        1
    );
    assert_eq!(
        check_refs(
            "t",
            r#"tandem_dropped_packets_total{reason="rplay"}"#,
            &exported
        )
        .len(),
        1
    );
    assert_eq!(
        check_refs("t", r#"tandem_tunnel_up{reason="auth"}"#, &exported).len(),
        1
    );
    assert_eq!(check_refs("t", "vector(0)", &exported).len(), 1);
}
