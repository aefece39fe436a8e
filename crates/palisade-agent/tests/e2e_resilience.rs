//! The agent against API failures, with a real kube-apiserver and real packets:
//!
//! - `api_server_restart`: the API server stops and starts again on the same etcd data.
//! - `dropped_connection`: a proxy between agent and API server resets every connection and
//!   refuses new ones for a while; objects change meanwhile.
//! - `watch_410_gone_after_etcd_compaction`: the same, and etcd is compacted past the
//!   agent's resource versions before the connection comes back (the API server's watch
//!   cache off, so watches are served by etcd itself): a watch resumed from its old
//!   resource version gets `410 Gone`. The agent re-lists after any watch error (see
//!   `palisade_agent::source`), so it does not resume and no 410 comes; a 410 in its log is
//!   reported if one does. Either way the rules must end as the objects say.
//!
//! In all three: /readyz says not ready while the API is unreachable and ready after; the
//! rules in force stay as they were meanwhile (a node never opens up); and the rules end
//! as the objects say. Root only; see `palisade_kubetest::e2e_prerequisites`.

use std::time::{Duration, Instant};

use palisade_kubetest::{
    ControlPlaneOptions, Error, Expectation, LabCluster, LabClusterSpec, PodPort, Result,
    e2e_prerequisites, labels, probe_now, probe_until, report,
};
use palisade_lab::{Families, LabPod, LabSpec};
use palisade_model::{IpFamily, Key, Protocol};
use serde_json::{Value, json};

const PROBE: Duration = Duration::from_millis(500);
const SETTLE: Duration = Duration::from_secs(20);
/// How long the agents may take to notice the API is gone, and to recover once it is back
/// (the watch retry backoff is capped at 1 s here).
const NOTICE: Duration = Duration::from_secs(20);
const RECOVER: Duration = Duration::from_secs(30);

fn key(s: &str) -> Key {
    s.parse().expect("key")
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

fn tcp(c: &LabCluster, from: &str, to: &str, allowed: bool) -> Expectation {
    Expectation::tcp(
        &key(from),
        c.lab.pod_ip(&key(to), IpFamily::V4).expect("v4"),
        80,
        allowed,
    )
}

/// x/server on node-0, x/client and x/stranger on node-1; the server admits role=client
/// only. Returns the cluster with its agents ready and that state enforced.
async fn cluster(via_proxy: bool, control_plane: ControlPlaneOptions) -> Result<LabCluster> {
    let pods = [("x/server", 0), ("x/client", 1), ("x/stranger", 1)];
    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 2,
            pods: pods
                .iter()
                .map(|(k, n)| {
                    LabPod::new(key(k))
                        .on_node(*n)
                        .with_ports([(80, Protocol::Tcp)])
                })
                .collect(),
            families: Families::V4_ONLY,
        },
        namespaces: vec![("x".into(), labels(&[]))],
        control_plane,
        via_proxy,
    };
    let mut c = LabCluster::start(spec).await?;
    let port = || vec![PodPort::new(Some("http"), 80, Protocol::Tcp)];
    c.run_lab_pod(&key("x/server"), labels(&[("app", "server")]), port())
        .await?;
    c.run_lab_pod(&key("x/client"), labels(&[("role", "client")]), port())
        .await?;
    c.run_lab_pod(&key("x/stranger"), labels(&[("role", "stranger")]), port())
        .await?;
    c.admin
        .apply_policy(&policy(
            "x",
            "server-allow-clients",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
            }),
        ))
        .await?;
    c.start_agents(|_| {}).await?;
    probe_until(&c.lab, &before(&c), PROBE, SETTLE)?;
    Ok(c)
}

/// The state [`cluster`] enforces.
fn before(c: &LabCluster) -> Vec<Expectation> {
    vec![
        tcp(c, "x/client", "x/server", true),
        tcp(c, "x/stranger", "x/server", false),
    ]
}

/// The changes made while the agents cannot reach the API: the client is a client no more,
/// the stranger becomes one, and the client's own node isolates it for ingress.
async fn change_while_unreachable(c: &LabCluster) -> Result<()> {
    c.kubelet
        .set_pod_labels(&key("x/client"), &labels(&[("role", "former-client")]))
        .await?;
    c.kubelet
        .set_pod_labels(&key("x/stranger"), &labels(&[("role", "client")]))
        .await?;
    c.admin
        .apply_policy(&policy(
            "x",
            "client-deny",
            json!({"podSelector": {"matchLabels": {"role": "former-client"}}, "policyTypes": ["Ingress"]}),
        ))
        .await?;
    Ok(())
}

/// The state after [`change_while_unreachable`].
fn after(c: &LabCluster) -> Vec<Expectation> {
    vec![
        tcp(c, "x/client", "x/server", false),
        tcp(c, "x/stranger", "x/server", true),
        tcp(c, "x/server", "x/client", false),
    ]
}

/// Every agent says not ready within [`NOTICE`]; returns the slowest time and a reason.
async fn all_not_ready(c: &mut LabCluster, since: Instant) -> Result<(Duration, String)> {
    let mut reason = String::new();
    for a in &mut c.agents {
        reason = a.wait_not_ready(NOTICE).await?;
    }
    Ok((since.elapsed(), reason))
}

async fn all_ready(c: &mut LabCluster, since: Instant) -> Result<Duration> {
    for a in &mut c.agents {
        a.wait_ready(RECOVER).await?;
    }
    Ok(since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let mut c = cluster(false, ControlPlaneOptions::default()).await?;

    let stopped = Instant::now();
    c.cp.stop_apiserver()?;
    let (noticed, reason) = all_not_ready(&mut c, stopped).await?;
    report(format!(
        "restart: API server stopped; agents not ready after {} ms ({reason})",
        noticed.as_millis()
    ));
    // The rules stay as they were while the API is gone.
    probe_now(&c.lab, &before(&c), PROBE)?;

    let started = Instant::now();
    c.cp.start_apiserver().await?;
    let up = started.elapsed();
    let ready = all_ready(&mut c, started).await?;
    report(format!(
        "restart: API server ready after {} ms, agents ready {} ms after its start",
        up.as_millis(),
        ready.as_millis()
    ));
    // Changes after the restart are enforced.
    let t = Instant::now();
    change_while_unreachable(&c).await?;
    probe_until(&c.lab, &after(&c), PROBE, SETTLE)
        .map_err(|e| Error::other(format!("{e}\n{}", c.agent_logs(20))))?;
    report(format!(
        "restart: changes after the restart enforced within {} ms",
        t.elapsed().as_millis()
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let mut c = cluster(true, ControlPlaneOptions::default()).await?;
    let proxy = c.proxy.as_ref().expect("via proxy");

    let cut = Instant::now();
    proxy.cut()?;
    let (noticed, reason) = all_not_ready(&mut c, cut).await?;
    report(format!(
        "cut: connections reset; agents not ready after {} ms ({reason})",
        noticed.as_millis()
    ));
    change_while_unreachable(&c).await?;
    // Nothing reached the agents: the old rules stay, checked twice over a second.
    probe_now(&c.lab, &before(&c), PROBE)?;
    probe_now(&c.lab, &before(&c), PROBE)?;
    let proxy = c.proxy.as_ref().expect("via proxy");
    let refused = proxy.refused();
    assert!(
        refused > 0,
        "the agents should have tried to reconnect through the cut proxy"
    );

    let restored = Instant::now();
    proxy.restore();
    let ready = all_ready(&mut c, restored).await?;
    probe_until(&c.lab, &after(&c), PROBE, SETTLE)
        .map_err(|e| Error::other(format!("{e}\n{}", c.agent_logs(20))))?;
    report(format!(
        "cut: {refused} reconnects refused while cut; restored: agents ready after {} ms, changes made meanwhile enforced after {} ms",
        ready.as_millis(),
        restored.elapsed().as_millis()
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_410_gone_after_etcd_compaction() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    // Watches straight from etcd: see ControlPlaneOptions::watch_cache.
    let mut c = cluster(
        true,
        ControlPlaneOptions {
            watch_cache: false,
            ..Default::default()
        },
    )
    .await?;
    let restarts_before: u64 = c.agents.iter().map(total_restarts).sum();

    let proxy = c.proxy.as_ref().expect("via proxy");
    proxy.cut()?;
    all_not_ready(&mut c, Instant::now()).await?;
    change_while_unreachable(&c).await?;
    let revision = c.cp.compact_etcd()?;
    probe_now(&c.lab, &before(&c), PROBE)?;

    let restored = Instant::now();
    c.proxy.as_ref().expect("via proxy").restore();
    let ready = all_ready(&mut c, restored).await?;
    probe_until(&c.lab, &after(&c), PROBE, SETTLE)
        .map_err(|e| Error::other(format!("{e}\n{}", c.agent_logs(20))))?;
    // The agents' watches failed and they re-listed (whether or not through a 410).
    let restarts_after: u64 = c.agents.iter().map(total_restarts).sum();
    assert!(
        restarts_after > restarts_before,
        "the agents' watches should have failed and restarted"
    );
    let saw_410 = c
        .agents
        .iter()
        .filter(|a| {
            let log = a.log();
            log.contains("too old") || log.contains("Expired")
        })
        .count();
    report(format!(
        "410: etcd compacted at revision {revision} while cut; restored: {} watch restarts, {saw_410} agent(s) saw 410 Gone, ready after {} ms, changes enforced after {} ms",
        restarts_after - restarts_before,
        ready.as_millis(),
        restored.elapsed().as_millis()
    ));
    Ok(())
}

fn total_restarts(a: &palisade_kubetest::Agent) -> u64 {
    a.metrics()
        .map(|m| {
            ["Namespace", "Pod", "NetworkPolicy"]
                .iter()
                .map(|k| m.watch_restarts(k))
                .sum()
        })
        .unwrap_or(0)
}
