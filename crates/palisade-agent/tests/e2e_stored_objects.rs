//! What the API server stored is what the agent enforces, and it never fails open: a real
//! kube-apiserver started with `StrictIPCIDRValidation=false` (as every server before 1.36)
//! stores policies that today's validation rejects, and one real agent per lab node
//! enforces them, checked with real packets.
//!
//! - `sloppy_cidrs_are_enforced_as_the_api_server_reads_them`: a CIDR with host bits set
//!   (its network), IPv4 octets with leading zeros (decimal), an IPv4-mapped IPv6 address
//!   (its IPv4 address); the agent stays ready and counts no uninterpretable object.
//! - `an_uninterpretable_policy_isolates_its_pods_without_its_allows`: a policy written
//!   straight into etcd (as an older or buggy server could have stored it) with an ipBlock
//!   that no parser reads: its pods stay isolated without any of its allows, the agent
//!   logs it, `palisade_uninterpretable_objects` counts it and `/readyz` names it; fixed
//!   through the API, its allows apply and the agent is ready again.
//!
//! Root only; see `palisade_kubetest::e2e_prerequisites`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_kubetest::{
    ControlPlaneOptions, Error, Expectation, LabCluster, LabClusterSpec, PodPort, Result,
    e2e_prerequisites, labels, probe_until,
};
use palisade_lab::{Families, LabPod, LabSpec};
use palisade_model::{IpFamily, Key, Protocol};
use serde_json::{Value, json};

const PROBE: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_secs(20);

fn key(s: &str) -> Key {
    s.parse().expect("key")
}

fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": spec,
    })
}

/// The server on node 0, five clients on node 1 (`198.18.2.2` to `198.18.2.6`).
const CLIENTS: [&str; 5] = ["x/a", "x/b", "x/c", "x/d", "x/e"];

async fn cluster(options: ControlPlaneOptions) -> Result<LabCluster> {
    let mut pods = vec![
        LabPod::new(key("x/server"))
            .on_node(0)
            .with_ports([(80, Protocol::Tcp)]),
    ];
    for c in CLIENTS {
        pods.push(
            LabPod::new(key(c))
                .on_node(1)
                .with_ports([(80, Protocol::Tcp)]),
        );
    }
    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 2,
            pods,
            families: Families::V4_ONLY,
        },
        namespaces: vec![("x".into(), labels(&[("team", "x")]))],
        control_plane: options,
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    let port = || vec![PodPort::new(Some("http"), 80, Protocol::Tcp)];
    c.run_lab_pod(&key("x/server"), labels(&[("app", "server")]), port())
        .await?;
    for client in CLIENTS {
        c.run_lab_pod(&key(client), labels(&[("role", "client")]), port())
            .await?;
    }
    c.start_agents(|_| {}).await?;
    Ok(c)
}

fn v4(c: &LabCluster, pod: &str) -> IpAddr {
    c.lab.pod_ip(&key(pod), IpFamily::V4).expect("v4 address")
}

/// `client -> server:80` for every client, allowed when listed in `allowed`.
fn expectations(c: &LabCluster, allowed: &[&str]) -> Vec<Expectation> {
    let server = v4(c, "x/server");
    CLIENTS
        .iter()
        .map(|client| Expectation::tcp(&key(client), server, 80, allowed.contains(client)))
        .collect()
}

fn gauge(c: &LabCluster, agent: usize) -> f64 {
    c.agents[agent]
        .metrics()
        .expect("metrics")
        .value("palisade_uninterpretable_objects", &[])
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_cidrs_are_enforced_as_the_api_server_reads_them() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let mut c = cluster(ControlPlaneOptions {
        strict_ip_cidr_validation: false,
        ..Default::default()
    })
    .await?;
    let addr = |p: &str| v4(&c, p).to_string();
    assert_eq!(
        [
            addr("x/a"),
            addr("x/b"),
            addr("x/c"),
            addr("x/d"),
            addr("x/e")
        ],
        [
            "198.18.2.2",
            "198.18.2.3",
            "198.18.2.4",
            "198.18.2.5",
            "198.18.2.6"
        ],
        "the lab's addressing plan changed; this test spells its CIDRs from it"
    );
    probe_until(&c.lab, &expectations(&c, &CLIENTS), PROBE, SETTLE)?;

    // Each ipBlock is one a 1.36+ API server rejects; this one stores them.
    let sloppy = policy(
        "sloppy-cidrs",
        json!({
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [
                // Host bits set: the network 198.18.2.2/31 (a and b).
                {"ipBlock": {"cidr": "198.18.2.3/31"}},
                // Leading zeros: decimal, 198.18.2.4 (c), not octal.
                {"ipBlock": {"cidr": "198.018.002.004/32"}},
                // IPv4-mapped IPv6: the IPv4 address 198.18.2.5 (d).
                {"ipBlock": {"cidr": "::ffff:198.18.2.5/128"}},
            ]}],
        }),
    );
    c.admin.apply_policy(&sloppy).await?;
    probe_until(
        &c.lab,
        &expectations(&c, &["x/a", "x/b", "x/c", "x/d"]),
        PROBE,
        SETTLE,
    )
    .map_err(|e| Error::other(format!("{e}\n{}", c.agent_logs(20))))?;
    c.settle().await?;
    for (i, agent) in c.agents.iter().enumerate() {
        assert!(
            agent.is_ready(),
            "agent {i} not ready: {:?}",
            agent.readyz()
        );
        assert_eq!(
            gauge(&c, i),
            0.0,
            "agent {i} counts an uninterpretable object"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uninterpretable_policy_isolates_its_pods_without_its_allows() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let mut c = cluster(ControlPlaneOptions {
        storage_json: true,
        ..Default::default()
    })
    .await?;
    probe_until(&c.lab, &expectations(&c, &CLIENTS), PROBE, SETTLE)?;

    // Stored without validation: one readable allow (a) and one ipBlock nothing can read.
    // Failing open would allow everyone (the unreadable peer dropped: `from` empty) or
    // just a; failing closed isolates the server with no allow at all.
    let broken = policy(
        "broken",
        json!({
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "198.18.2.2/32"}}]},
                {"from": [{"ipBlock": {"cidr": "198.18.2.300/32"}}]},
            ],
        }),
    );
    let t0 = Instant::now();
    c.cp.etcd_put_json("/registry/networkpolicies/x/broken", &broken)?;
    probe_until(&c.lab, &expectations(&c, &[]), PROBE, SETTLE)
        .map_err(|e| Error::other(format!("{e}\n{}", c.agent_logs(20))))?;
    let isolated_after = t0.elapsed();

    // Logged, counted, named by /readyz on both agents.
    let deadline = Instant::now() + SETTLE;
    loop {
        let all = (0..c.agents.len()).all(|i| {
            gauge(&c, i) == 1.0
                && c.agents[i].readyz().is_ok_and(|r| {
                    r.status == 503
                        && r.body
                            .contains("NetworkPolicy x/broken cannot be interpreted")
                })
        });
        if all {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::other(format!(
                "agents do not report the broken policy: gauges {:?}, readyz {:?}\n{}",
                (0..c.agents.len())
                    .map(|i| gauge(&c, i))
                    .collect::<Vec<_>>(),
                c.agents
                    .iter()
                    .map(|a| a.readyz().map(|r| r.body))
                    .collect::<Vec<_>>(),
                c.agent_logs(20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = c.agent_logs(50);
    assert!(
        logs.contains("cannot be fully interpreted") && logs.contains("198.18.2.300/32"),
        "the agents' logs should name the policy and its field:\n{logs}"
    );

    // Fixed through the API: its allows apply, the agents are ready again.
    let fixed = policy(
        "broken",
        json!({
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "198.18.2.2/32"}}]},
                {"from": [{"ipBlock": {"cidr": "198.18.2.3/32"}}]},
            ],
        }),
    );
    c.admin.apply_policy(&fixed).await?;
    probe_until(&c.lab, &expectations(&c, &["x/a", "x/b"]), PROBE, SETTLE)?;
    c.settle().await?;
    for i in 0..c.agents.len() {
        assert_eq!(gauge(&c, i), 0.0, "agent {i} still counts it");
        assert!(
            c.agents[i].is_ready(),
            "agent {i}: {:?}",
            c.agents[i].readyz()
        );
    }
    palisade_kubetest::report(format!(
        "stored objects: uninterpretable policy isolated its pod {:.1} ms after the etcd write",
        isolated_after.as_secs_f64() * 1000.0
    ));
    Ok(())
}
