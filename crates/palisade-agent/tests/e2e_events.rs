//! End to end through a real kube-apiserver (issue 14): a policy annotated
//! `palisade.dev/mode: audit` never drops, and the agent reports what it would deny as
//! `audit-denied` events naming it; removing the annotation enforces it (the same flow is
//! dropped and reported as `denied`), annotating it again lets the flow through again.
//! Events are read where an operator reads them: the agent's JSON lines on stdout.
//!
//! Root only; see `palisade_kubetest::e2e_prerequisites`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_ir::events::{Verdict, VerdictEvent};
use palisade_kubetest::{
    Error, Expectation, LabCluster, LabClusterSpec, PodPort, Result, e2e_prerequisites, labels,
    probe_until,
};
use palisade_lab::{Families, LabPod, LabSpec};
use palisade_model::{IpFamily, Key, Protocol};
use serde_json::{Value, json};

const PROBE: Duration = Duration::from_millis(300);
const SETTLE: Duration = Duration::from_secs(15);

fn key(s: &str) -> Key {
    s.parse().expect("key")
}

fn lockdown(audit: bool) -> Value {
    let mut metadata = json!({"name": "lockdown", "namespace": "x"});
    if audit {
        metadata["annotations"] = json!({"palisade.dev/mode": "audit"});
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]},
    })
}

/// The verdict events node `node`'s agent wrote on stdout so far.
fn events(c: &LabCluster, node: usize) -> Vec<VerdictEvent> {
    c.agents[node]
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for an event of `verdict` for `to:80` naming `x/lockdown`, beyond the first `seen`.
fn wait_event(c: &LabCluster, seen: usize, verdict: Verdict, to: IpAddr) -> Result<VerdictEvent> {
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        let found = events(c, 0).into_iter().skip(seen).find(|e| {
            e.verdict == verdict
                && e.dst == to
                && e.port == Some(80)
                && e.reason
                    .as_ref()
                    .is_some_and(|r| r.policies == ["x/lockdown".to_string()])
        });
        if let Some(e) = found {
            return Ok(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::other(format!(
        "no {verdict} event for {to}:80 naming x/lockdown within {SETTLE:?}; events: {:?}\n{}",
        events(c, 0),
        c.agent_logs(20)
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_reports_and_enforce_drops() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    audit_mode(None).await
}

/// The same with the agents on the eBPF dataplane (ring-buffer events, its audit tier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_reports_and_enforce_drops_ebpf() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    audit_mode(Some("--backend=ebpf")).await
}

/// `backend`: an extra agent flag choosing the dataplane (None: the default, or
/// `PALISADE_E2E_BACKEND`).
async fn audit_mode(backend: Option<&str>) -> Result<()> {
    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 2,
            pods: vec![
                LabPod::new(key("x/server"))
                    .on_node(0)
                    .with_ports([(80, Protocol::Tcp)]),
                LabPod::new(key("x/client"))
                    .on_node(1)
                    .with_ports([(80, Protocol::Tcp)]),
            ],
            families: Families::DUAL,
        },
        namespaces: vec![("x".into(), labels(&[("team", "x")]))],
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    let http = vec![PodPort::new(Some("http"), 80, Protocol::Tcp)];
    c.run_lab_pod(&key("x/server"), labels(&[("app", "server")]), http.clone())
        .await?;
    c.run_lab_pod(&key("x/client"), labels(&[("app", "client")]), http)
        .await?;
    c.start_agents(|s| s.extra_args.extend(backend.map(str::to_string)))
        .await?;
    let server: IpAddr = c.lab.pod_ip(&key("x/server"), IpFamily::V4).expect("ip");
    let flow = |allowed| vec![Expectation::tcp(&key("x/client"), server, 80, allowed)];

    // In audit mode: the flow passes, and is reported as audit-denied.
    let admin = c.admin.clone();
    admin.apply_policy(&lockdown(true)).await?;
    c.settle().await?;
    probe_until(&c.lab, &flow(true), PROBE, SETTLE)?;
    let audit = wait_event(&c, 0, Verdict::AuditDenied, server)?;
    assert_eq!(audit.dst_pod.as_deref(), Some("x/server"));

    // The annotation removed: enforced, in one update; the flow is dropped and reported.
    let seen = events(&c, 0).len();
    admin.apply_policy(&lockdown(false)).await?;
    c.settle().await?;
    probe_until(&c.lab, &flow(false), PROBE, SETTLE)?;
    let denied = wait_event(&c, seen, Verdict::Denied, server)?;
    assert_eq!(denied.direction, palisade_ir::Direction::Ingress);

    // Back to audit mode: passes again.
    admin.apply_policy(&lockdown(true)).await?;
    c.settle().await?;
    probe_until(&c.lab, &flow(true), PROBE, SETTLE)?;
    let metrics = c.agents[0].metrics()?;
    let audited = metrics
        .value(
            "palisade_verdict_events_total",
            &[("verdict", "audit-denied"), ("direction", "ingress")],
        )
        .unwrap_or(0.0);
    assert!(audited >= 1.0, "{}", metrics.0);
    Ok(())
}
