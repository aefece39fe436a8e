//! The agent process's own life, with a real kube-apiserver and real packets:
//!
//! - `sigkill_and_restart_keep_enforcing`: both agents are killed with SIGKILL and started
//!   again. Throughout, a background prober checks that a denied flow never connects and
//!   an allowed one never fails; an established TCP connection carries data before, while
//!   the agents are dead and after the restart; the rules stay in the node namespaces; a
//!   change made while the agents were dead is enforced after the restart.
//! - `sigterm_leaves_rules_and_cleanup_on_exit_removes_them`: SIGTERM exits cleanly and
//!   leaves the rules (a node never opens up because its agent stops); with
//!   `--cleanup-on-exit` SIGTERM removes them.
//!
//! Root only; see `palisade_kubetest::e2e_prerequisites`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_kubetest::{
    Agent, ContinuousProber, EchoConnection, Error, Expectation, FlowCheck, LabCluster,
    LabClusterSpec, PodPort, Result, e2e_prerequisites, labels, probe_now, probe_until, report,
};
use palisade_lab::{Families, Lab, LabPod, LabSpec};
use palisade_model::{IpFamily, Key, Protocol};
use serde_json::json;

const PROBE: Duration = Duration::from_millis(500);
const SETTLE: Duration = Duration::from_secs(20);
/// The port of the long-lived connection (served by the test's echo server, not the lab's).
const ECHO_PORT: u16 = 9000;

fn key(s: &str) -> Key {
    s.parse().expect("key")
}

fn tcp(c: &LabCluster, from: &str, to: &str, allowed: bool) -> Expectation {
    Expectation::tcp(
        &key(from),
        c.lab.pod_ip(&key(to), IpFamily::V4).expect("v4"),
        80,
        allowed,
    )
}

/// x/server on node-0; x/client, x/stranger and x/late on node-1. The server admits
/// role=client only, on 80 and on the echo port. Agents ready, that state enforced.
async fn cluster() -> Result<LabCluster> {
    let pods = [
        ("x/server", 0),
        ("x/client", 1),
        ("x/stranger", 1),
        ("x/late", 1),
    ];
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
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    let ports = || {
        vec![
            PodPort::new(Some("http"), 80, Protocol::Tcp),
            PodPort::new(Some("echo"), ECHO_PORT, Protocol::Tcp),
        ]
    };
    c.run_lab_pod(&key("x/server"), labels(&[("app", "server")]), ports())
        .await?;
    c.run_lab_pod(&key("x/client"), labels(&[("role", "client")]), ports())
        .await?;
    c.run_lab_pod(&key("x/stranger"), labels(&[("role", "stranger")]), ports())
        .await?;
    c.run_lab_pod(&key("x/late"), labels(&[("role", "late")]), ports())
        .await?;
    c.admin
        .apply_policy(&json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "server-allow-clients", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 80}, {"port": ECHO_PORT}],
                }],
            },
        }))
        .await?;
    c.start_agents(|_| {}).await?;
    probe_until(&c.lab, &enforced(&c), PROBE, SETTLE)?;
    Ok(c)
}

/// What [`cluster`] enforces.
fn enforced(c: &LabCluster) -> Vec<Expectation> {
    vec![
        tcp(c, "x/client", "x/server", true),
        tcp(c, "x/stranger", "x/server", false),
        tcp(c, "x/late", "x/server", false),
    ]
}

fn has_table(lab: &Lab, node: usize) -> bool {
    lab.run_in_node(node, &["nft", "list", "table", "inet", "palisade"], None)
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keep_enforcing() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let mut c = cluster().await?;
    let netns = |k: &str| c.lab.pod_netns(&key(k)).expect("netns").to_string();
    let server_ip = c.lab.pod_ip(&key("x/server"), IpFamily::V4).expect("v4");
    let mut echo = EchoConnection::open(
        &netns("x/server"),
        SocketAddr::new(server_ip, ECHO_PORT),
        &netns("x/client"),
        Duration::from_secs(5),
    )?;
    let prober = ContinuousProber::start(vec![
        FlowCheck {
            name: "x/stranger -> x/server:80".into(),
            from_netns: netns("x/stranger"),
            to: SocketAddr::new(server_ip, 80),
            allowed: false,
            timeout: Duration::from_millis(300),
        },
        FlowCheck {
            name: "x/client -> x/server:80 (new connection)".into(),
            from_netns: netns("x/client"),
            to: SocketAddr::new(server_ip, 80),
            allowed: true,
            timeout: Duration::from_secs(3),
        },
    ])?;
    let wait_rounds = |p: &ContinuousProber, n: usize| {
        let started = Instant::now();
        while p.rounds() < n && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_rounds(&prober, 3);

    // SIGKILL both agents: no chance to touch the rules.
    let killed = Instant::now();
    for a in &mut c.agents {
        a.kill()?;
    }
    for node in 0..c.lab.node_count() {
        assert!(
            has_table(&c.lab, node),
            "node-{node}: the rules must stay when the agent dies"
        );
    }
    echo.exchange(Duration::from_secs(5))?;
    probe_now(&c.lab, &enforced(&c), PROBE)?;
    // A change while no agent runs: x/late becomes a client.
    c.kubelet
        .set_pod_labels(&key("x/late"), &labels(&[("role", "client")]))
        .await?;
    let dead_rounds = prober.rounds();
    wait_rounds(&prober, dead_rounds + 3);
    probe_now(&c.lab, &enforced(&c), PROBE)?; // not yet: nobody applies it

    let mut ready = Vec::new();
    for i in 0..c.agents.len() {
        ready.push(c.restart_agent(i).await?);
    }
    let down = killed.elapsed();
    let t = Instant::now();
    probe_until(
        &c.lab,
        &[tcp(&c, "x/late", "x/server", true)],
        PROBE,
        SETTLE,
    )?;
    let late = t.elapsed();
    echo.exchange(Duration::from_secs(5))?;
    let restarted_rounds = prober.rounds();
    wait_rounds(&prober, restarted_rounds + 3);
    echo.exchange(Duration::from_secs(5))?;
    let watched = prober.finish();
    assert!(
        watched.violations.is_empty(),
        "enforcement did not hold throughout kill and restart:\n  {}\n{}",
        watched.violations.join("\n  "),
        c.agent_logs(20)
    );
    probe_now(
        &c.lab,
        &[
            tcp(&c, "x/stranger", "x/server", false),
            tcp(&c, "x/late", "x/server", true),
        ],
        PROBE,
    )?;
    report(format!(
        "sigkill: agents dead/restarting for {} ms (ready {:?} ms after start), {} prober rounds without a violation, \
         established connection carried {} exchanges across, change made while dead enforced {} ms after restart",
        down.as_millis(),
        ready.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        watched.rounds,
        echo.exchanged(),
        late.as_millis()
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_rules_and_cleanup_on_exit_removes_them() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let mut c = cluster().await?;

    // SIGTERM, default flags: a clean exit, the rules stay.
    let status = c.agents[0].terminate(Duration::from_secs(10))?;
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        c.agents[0].log_tail(20)
    );
    assert!(c.agents[0].log().contains("leaving rules in place"));
    assert!(has_table(&c.lab, 0), "node-0: SIGTERM must leave the rules");
    for _ in 0..2 {
        probe_now(&c.lab, &enforced(&c), PROBE)?;
    }
    report("sigterm: agent exited 0, node-0's rules stayed and still enforce");

    // A new agent for node-0 with --cleanup-on-exit takes over, then is stopped.
    let mut spec = c.agent_spec(0)?;
    spec.cleanup_on_exit = true;
    let mut agent = Agent::spawn(spec)?;
    agent.wait_ready(Duration::from_secs(30)).await?;
    probe_now(&c.lab, &enforced(&c), PROBE)?;
    let status = agent.terminate(Duration::from_secs(10))?;
    assert!(
        status.success(),
        "SIGTERM with --cleanup-on-exit: {status}\n{}",
        agent.log_tail(20)
    );
    assert!(
        !has_table(&c.lab, 0),
        "node-0: --cleanup-on-exit must remove the table"
    );
    // Node-0 enforces nothing any more: the server is open (node-1's agent still runs and
    // does not isolate its pods' egress).
    probe_until(
        &c.lab,
        &[
            tcp(&c, "x/stranger", "x/server", true),
            tcp(&c, "x/late", "x/server", true),
        ],
        PROBE,
        SETTLE,
    )?;
    assert!(has_table(&c.lab, 1), "node-1's agent is untouched");
    report(
        "sigterm: with --cleanup-on-exit the agent exited 0 and node-0's table is gone (server open)",
    );
    Ok(())
}
