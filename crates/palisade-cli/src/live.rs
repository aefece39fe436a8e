//! Commands that ask a running agent: `events` (follow its verdict events), `top` (its
//! busiest rules and most-dropping endpoints) and `lint --live` (rules that never
//! matched). The agent serves plain HTTP on its `--listen` address (a node-local port).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use palisade_ir::events::{Verdict, VerdictEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// One readable line per event.
    Text,
    /// The agent's JSON lines, unchanged.
    Json,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The agent's HTTP address, e.g. http://127.0.0.1:9464.
    #[arg(long)]
    pub agent: String,
    /// Only events with a pod of this namespace at either end.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only events with this pod (NAME or NAMESPACE/NAME) at either end.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this verdict: denied, audit-denied or allowed.
    #[arg(long)]
    pub verdict: Option<Verdict>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = EventFormat::Text)]
    pub output: EventFormat,
}

fn url(agent: &str, path: &str) -> String {
    let base = if agent.contains("://") {
        agent.to_string()
    } else {
        format!("http://{agent}")
    };
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Follows the agent's `/events` like `kubectl logs -f`, until it closes or Ctrl-C.
pub fn events(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(ns) = &args.namespace {
        query.push(("namespace", ns.clone()));
    }
    if let Some(pod) = &args.pod {
        query.push(("pod", pod.clone()));
    }
    if let Some(v) = args.verdict {
        query.push(("verdict", v.as_str().to_string()));
    }
    let target = url(&args.agent, "/events");
    let mut request = ureq::get(&target);
    for (k, v) in &query {
        request = request.query(*k, v);
    }
    let response = request
        .call()
        .with_context(|| format!("following {target}"))?;
    let reader = BufReader::new(response.into_body().into_reader());
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {target}"))?;
        match args.output {
            EventFormat::Json => println!("{line}"),
            EventFormat::Text => match serde_json::from_str::<VerdictEvent>(&line) {
                Ok(event) => println!("{}", event_line(&event)),
                Err(_) => println!("{line}"),
            },
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `TIME NODE VERDICT FROM -> TO PORT/PROTO (direction): reason`, with the `palisade
/// explain` command that gives the same reason from manifests.
pub fn event_line(e: &VerdictEvent) -> String {
    let end = |pod: &Option<String>, ip: &std::net::IpAddr| pod.clone().unwrap_or(ip.to_string());
    let port = e.port.map_or(String::new(), |p| format!("{p}/"));
    let reason = e
        .reason
        .as_ref()
        .map_or_else(|| format!("unknown tag {}", e.tag), ToString::to_string);
    let reason = match (e.verdict, &e.reason) {
        (Verdict::AuditDenied, Some(r)) => format!(
            "no enforced policy isolates it; {} (audit mode) would deny it",
            r.policies.join(", ")
        ),
        _ => reason,
    };
    format!(
        "{} {} {} {} -> {} {}{} ({}): {}",
        e.time,
        e.node,
        e.verdict.as_str().to_uppercase(),
        end(&e.src_pod, &e.src),
        end(&e.dst_pod, &e.dst),
        port,
        e.protocol,
        e.direction.as_str(),
        reason
    )
}

/// One sample of a counter family: labels -> value.
type Samples = BTreeMap<Vec<(String, String)>, f64>;

/// `name{a="x",b="y"} value` lines of the Prometheus text format, for one metric name.
fn samples(text: &str, name: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k.to_string(), v.trim_end_matches('"').to_string()))
            })
            .collect();
        out.insert(labels, value);
    }
    out
}

fn scrape(agent: &str) -> anyhow::Result<String> {
    let target = url(agent, "/metrics");
    ureq::get(&target)
        .call()
        .with_context(|| format!("reading {target}"))?
        .into_body()
        .read_to_string()
        .with_context(|| format!("reading {target}"))
}

/// The increase of every series between two scrapes (a series that appeared counts from 0).
fn increase(before: &Samples, after: &Samples) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out: Vec<_> = after
        .iter()
        .map(|(labels, v)| {
            (
                labels.clone(),
                v - before.get(labels).copied().unwrap_or(0.0),
            )
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

const RULES: &str = "palisade_rule_allowed_packets";
const DROPS: &str = "palisade_default_deny_dropped_packets";
const AUDIT: &str = "palisade_audit_denied_packets";

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The agent's HTTP address, e.g. http://127.0.0.1:9464.
    #[arg(long)]
    pub agent: String,
    /// Measure over this many seconds (the agent reads its counters every
    /// --counters-interval-ms: measure over at least that).
    #[arg(long, default_value_t = 15)]
    pub interval: u64,
    /// Rows per table.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

/// The busiest allowing rules and the most-dropping endpoints over an interval.
pub fn top(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let before = scrape(&args.agent)?;
    eprintln!("measuring for {}s...", args.interval);
    std::thread::sleep(Duration::from_secs(args.interval));
    let after = scrape(&args.agent)?;
    let secs = args.interval.max(1) as f64;
    println!(
        "{:<60} {:>10} {:>12}",
        "ALLOWING RULE", "NEW CONNS", "PER SECOND"
    );
    for (labels, n) in increase(&samples(&before, RULES), &samples(&after, RULES))
        .iter()
        .take(args.limit)
    {
        let rule = format!(
            "{}/{} {}[{}]",
            label(labels, "namespace"),
            label(labels, "policy"),
            label(labels, "direction"),
            label(labels, "rule")
        );
        println!("{rule:<60} {n:>10} {:>12.2}", n / secs);
    }
    println!();
    for (title, metric) in [
        ("DROPPING ENDPOINT", DROPS),
        ("AUDIT-DENYING ENDPOINT", AUDIT),
    ] {
        println!("{title:<60} {:>10} {:>12}", "NEW CONNS", "PER SECOND");
        for (labels, n) in increase(&samples(&before, metric), &samples(&after, metric))
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .take(args.limit)
        {
            let endpoint = format!(
                "{} {}",
                label(labels, "endpoint"),
                label(labels, "direction")
            );
            println!("{endpoint:<60} {n:>10} {:>12.2}", n / secs);
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// `lint --live`: rules of the agent's ruleset whose counter did not move over `period`.
/// Exit 1 when some did not.
pub fn lint_live(agent: &str, period: Duration) -> anyhow::Result<ExitCode> {
    let before = samples(&scrape(agent)?, RULES);
    if before.is_empty() {
        bail!(
            "{agent} reports no per-rule counters yet (no policy rule selects its pods, or its first counter read is pending)"
        );
    }
    eprintln!(
        "watching {} rule(s) for {}s...",
        before.len(),
        period.as_secs()
    );
    std::thread::sleep(period);
    let after = samples(&scrape(agent)?, RULES);
    let idle: Vec<_> = increase(&before, &after)
        .into_iter()
        .filter(|(labels, n)| *n == 0.0 && before.contains_key(labels))
        .collect();
    for (labels, _) in &idle {
        println!(
            "warning: NetworkPolicy {}/{}: spec.{}[{}]: allowed no new connection in {}s on this node [unused-rule]; a candidate for removal",
            label(labels, "namespace"),
            label(labels, "policy"),
            label(labels, "direction"),
            label(labels, "rule"),
            period.as_secs()
        );
    }
    println!("{} rule(s) watched, {} unused", after.len(), idle.len());
    Ok(if idle.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_parse_with_labels() {
        let text = "# HELP palisade_rule_allowed_packets x\n\
                    palisade_rule_allowed_packets{namespace=\"x\",policy=\"p\",direction=\"ingress\",rule=\"0\"} 7\n\
                    palisade_rule_allowed_packets{namespace=\"x\",policy=\"q\",direction=\"egress\",rule=\"1\"} 0\n\
                    palisade_rule_allowed_packets_other 3\n";
        let s = samples(text, RULES);
        assert_eq!(s.len(), 2);
        let (labels, v) = s.iter().find(|(_, v)| **v == 7.0).unwrap();
        assert_eq!(*v, 7.0);
        assert_eq!(label(labels, "policy"), "p");
        assert_eq!(label(labels, "rule"), "0");
        let later = samples(&text.replace("} 7", "} 10"), RULES);
        let inc = increase(&s, &later);
        assert_eq!(inc[0].1, 3.0);
        assert_eq!(inc[1].1, 0.0);
    }
}
