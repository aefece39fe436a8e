//! End to end through a real kube-apiserver: objects written through the API, one real
//! `palisade agent` process per lab node, real packets between the lab's pods.
//!
//! - `api_changes_are_enforced_on_the_right_nodes`: policy create (timed from the API call
//!   to the packets), egress on the other node, pod label change, namespace label change,
//!   policy update and delete, each seen in real packets, IPv4 and IPv6; run once per
//!   dataplane backend (`nft`, and `iptables` as `_iptables`).
//! - `a_reused_pod_ip_never_inherits_the_old_pods_allows`: a completed pod that keeps its
//!   IP in its status, a pod deleted and its IP given to a pod with other labels, as a peer
//!   and as the selected pod.
//!
//! Root only; see `palisade_kubetest::e2e_prerequisites`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_kubetest::{
    Error, Expectation, LabCluster, LabClusterSpec, PodPort, Result, RunPod, e2e_prerequisites,
    labels, probe_until, report, time_flip,
};
use palisade_lab::{Families, LabPod, LabSpec};
use palisade_model::{IpFamily, Key, Protocol};
use serde_json::{Value, json};

/// Probe bound in the timing loops: a denied probe costs this much per round.
const PROBE: Duration = Duration::from_millis(250);
/// How long a change may take to show in the packets.
const SETTLE: Duration = Duration::from_secs(15);

fn key(s: &str) -> Key {
    s.parse().expect("key")
}

fn tcp_ports(ports: &[u16]) -> Vec<PodPort> {
    ports
        .iter()
        .map(|&p| PodPort::new(Some(&format!("tcp-{p}")), p, Protocol::Tcp))
        .collect()
}

/// `from -> to:port` over both families.
fn both(c: &LabCluster, from: &str, to: &str, port: u16, allowed: bool) -> Vec<Expectation> {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .map(|f| {
            let ip: IpAddr = c.lab.pod_ip(&key(to), f).expect("lab address");
            Expectation::tcp(&key(from), ip, port, allowed)
        })
        .collect()
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// Sum and count of the agents' event-to-applied histograms.
fn histogram_totals(c: &LabCluster) -> (f64, f64) {
    c.agents.iter().fold((0.0, 0.0), |(s, n), a| {
        let m = a.metrics().expect("metrics");
        (
            s + m
                .value("palisade_event_to_applied_seconds_sum", &[])
                .unwrap_or(0.0),
            n + m
                .value("palisade_event_to_applied_seconds_count", &[])
                .unwrap_or(0.0),
        )
    })
}

/// One timed change.
struct Timed {
    /// From just before the API call until the first expectation flipped in real packets.
    api_to_packets: Duration,
}

/// Runs the write, times the flip of `expected[0]` (the cell the change flips) from just
/// before the API call, then probes until all of `expected` hold and waits until the
/// agents applied every event. Reports the agents' own mean event-to-applied time over the
/// step's events too (from their /metrics).
async fn timed<F: Future<Output = Result<()>>>(
    c: &mut LabCluster,
    step: &str,
    write: F,
    expected: Vec<Expectation>,
) -> Result<Timed> {
    let fail =
        |c: &LabCluster, e: Error| Error::other(format!("{step}: {e}\n{}", c.agent_logs(15)));
    let (sum0, n0) = histogram_totals(c);
    let t0 = Instant::now();
    write.await?;
    let written = t0.elapsed();
    let flipped = time_flip(&c.lab, &expected[0], SETTLE).map_err(|e| fail(c, e))?;
    let api_to_packets = written + flipped;
    probe_until(&c.lab, &expected, PROBE, SETTLE).map_err(|e| fail(c, e))?;
    c.settle().await?;
    let (sum1, n1) = histogram_totals(c);
    let agent_mean = (n1 > n0).then(|| Duration::from_secs_f64((sum1 - sum0) / (n1 - n0)));
    report(format!(
        "enforce: {step:<40} API call -> packets {:>6.1} ms (API call {:>5.1} ms); agents' event->applied mean {} over {} events",
        api_to_packets.as_secs_f64() * 1000.0,
        written.as_secs_f64() * 1000.0,
        agent_mean.map_or("-".into(), |d| format!(
            "{:.1} ms",
            d.as_secs_f64() * 1000.0
        )),
        n1 - n0,
    ));
    Ok(Timed { api_to_packets })
}

/// A dataplane backend the agents run with: its `--backend` and how to list what it
/// installed in a node (to check which node holds which rules).
struct Backend {
    arg: &'static str,
    listing: &'static [&'static str],
}

const NFT: Backend = Backend {
    arg: "--backend=nft",
    listing: &["nft", "list", "table", "inet", "palisade"],
};

const IPTABLES: Backend = Backend {
    // Forced onto nf_tables: the listing must read the same backend the agent writes.
    arg: "--backend=iptables-nft",
    listing: &["iptables-nft-save", "-t", "filter"],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_are_enforced_on_the_right_nodes() -> Result<()> {
    api_changes_are_enforced(&NFT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_are_enforced_on_the_right_nodes_iptables() -> Result<()> {
    api_changes_are_enforced(&IPTABLES).await
}

async fn api_changes_are_enforced(backend: &Backend) -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 2,
            pods: vec![
                LabPod::new(key("x/server"))
                    .on_node(0)
                    .with_ports([(80, Protocol::Tcp), (81, Protocol::Tcp)]),
                LabPod::new(key("x/peer"))
                    .on_node(0)
                    .with_ports([(80, Protocol::Tcp)]),
                LabPod::new(key("x/client"))
                    .on_node(1)
                    .with_ports([(80, Protocol::Tcp)]),
                LabPod::new(key("y/client"))
                    .on_node(1)
                    .with_ports([(80, Protocol::Tcp)]),
            ],
            families: Families::DUAL,
        },
        namespaces: vec![
            ("x".into(), labels(&[("team", "x")])),
            ("y".into(), labels(&[("team", "y")])),
        ],
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    c.run_lab_pod(
        &key("x/server"),
        labels(&[("app", "server")]),
        tcp_ports(&[80, 81]),
    )
    .await?;
    c.run_lab_pod(
        &key("x/peer"),
        labels(&[("role", "peer")]),
        tcp_ports(&[80]),
    )
    .await?;
    c.run_lab_pod(
        &key("x/client"),
        labels(&[("role", "client")]),
        tcp_ports(&[80]),
    )
    .await?;
    c.run_lab_pod(
        &key("y/client"),
        labels(&[("role", "client")]),
        tcp_ports(&[80]),
    )
    .await?;
    c.start_agents(|s| s.extra_args.push(backend.arg.into()))
        .await?;

    // No policy: everything flows.
    let mut open = Vec::new();
    for from in ["x/peer", "x/client", "y/client"] {
        open.extend(both(&c, from, "x/server", 80, true));
    }
    open.extend(both(&c, "x/client", "x/peer", 80, true));
    probe_until(&c.lab, &open, PROBE, SETTLE)?;

    let mut times = Vec::new();

    // 1. Isolate the server (node-0) for ingress.
    let deny = policy(
        "x",
        "server-deny",
        json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}),
    );
    let mut expected = Vec::new();
    for from in ["x/peer", "x/client", "y/client"] {
        expected.extend(both(&c, from, "x/server", 80, false));
    }
    expected.extend(both(&c, "x/server", "x/client", 80, true)); // egress not isolated
    let admin = c.admin.clone();
    times.push(
        timed(
            &mut c,
            "create deny policy (server, node-0)",
            async { admin.apply_policy(&deny).await.map(drop) },
            expected,
        )
        .await?,
    );
    // The rules are on the server's node only.
    let server_v4 = c
        .lab
        .pod_ip(&key("x/server"), IpFamily::V4)
        .expect("v4")
        .to_string();
    let ruleset = |i: usize| -> String {
        let out = c
            .lab
            .run_in_node(i, backend.listing, None)
            .expect("listing the node's rules");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        ruleset(0).contains(&server_v4),
        "node-0's ruleset should hold the server:\n{}",
        ruleset(0)
    );
    assert!(
        !ruleset(1).contains(&server_v4),
        "node-1's ruleset should not mention the server:\n{}",
        ruleset(1)
    );

    // 2. Allow clients: same namespace by pod label, other namespace by namespace label.
    let allow = |ports: &[u16]| {
        policy(
            "x",
            "server-allow",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{
                    "from": [
                        {"podSelector": {"matchLabels": {"role": "client"}}},
                        {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"role": "client"}}},
                    ],
                    "ports": ports.iter().map(|p| json!({"port": p})).collect::<Vec<_>>(),
                }],
            }),
        )
    };
    let allow_80 = allow(&[80]);
    let mut expected = both(&c, "x/client", "x/server", 80, true);
    expected.extend(both(&c, "y/client", "x/server", 80, true));
    expected.extend(both(&c, "x/peer", "x/server", 80, false));
    expected.extend(both(&c, "x/client", "x/server", 81, false));
    times.push(
        timed(
            &mut c,
            "create allow policy",
            async { admin.apply_policy(&allow_80).await.map(drop) },
            expected,
        )
        .await?,
    );

    // 3. Egress, enforced on node-1: x/client may only reach the server, on port 80.
    let egress = policy(
        "x",
        "client-egress",
        json!({
            "podSelector": {"matchLabels": {"role": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": 80}]}],
        }),
    );
    let mut expected = both(&c, "x/client", "x/peer", 80, false);
    expected.extend(both(&c, "x/client", "x/server", 80, true));
    expected.extend(both(&c, "y/client", "x/peer", 80, true));
    times.push(
        timed(
            &mut c,
            "create egress policy (client, node-1)",
            async { admin.apply_policy(&egress).await.map(drop) },
            expected,
        )
        .await?,
    );

    // 4. Pod label change: x/client is no client any more, then again.
    let kubelet = c.kubelet.clone();
    let mut expected = both(&c, "x/client", "x/server", 80, false);
    expected.extend(both(&c, "x/client", "x/peer", 80, true)); // no longer egress-isolated
    times.push(
        timed(
            &mut c,
            "pod label role=client -> role=none",
            async {
                kubelet
                    .set_pod_labels(&key("x/client"), &labels(&[("role", "none")]))
                    .await
                    .map(drop)
            },
            expected,
        )
        .await?,
    );
    let mut expected = both(&c, "x/client", "x/server", 80, true);
    expected.extend(both(&c, "x/client", "x/peer", 80, false));
    times.push(
        timed(
            &mut c,
            "pod label role=none -> role=client",
            async {
                kubelet
                    .set_pod_labels(&key("x/client"), &labels(&[("role", "client")]))
                    .await
                    .map(drop)
            },
            expected,
        )
        .await?,
    );

    // 5. Namespace label change: y is not team=y any more.
    let expected = both(&c, "y/client", "x/server", 80, false);
    times.push(
        timed(
            &mut c,
            "namespace label team=y -> team=other",
            async {
                admin
                    .set_namespace_labels("y", &labels(&[("team", "other")]))
                    .await
                    .map(drop)
            },
            expected,
        )
        .await?,
    );
    let expected = both(&c, "y/client", "x/server", 80, true);
    times.push(
        timed(
            &mut c,
            "namespace label team=other -> team=y",
            async {
                admin
                    .set_namespace_labels("y", &labels(&[("team", "y")]))
                    .await
                    .map(drop)
            },
            expected,
        )
        .await?,
    );

    // 6. Policy update: port 81 instead of 80.
    let allow_81 = allow(&[81]);
    let mut expected = both(&c, "y/client", "x/server", 80, false);
    expected.extend(both(&c, "y/client", "x/server", 81, true));
    times.push(
        timed(
            &mut c,
            "update allow policy port 80 -> 81",
            async { admin.apply_policy(&allow_81).await.map(drop) },
            expected,
        )
        .await?,
    );

    // 7. Policy delete: the deny and the allow go, the server is open; the egress stays.
    let mut expected = both(&c, "x/peer", "x/server", 80, true);
    expected.extend(both(&c, "y/client", "x/server", 80, true));
    expected.extend(both(&c, "x/client", "x/peer", 80, false));
    times.push(
        timed(
            &mut c,
            "delete deny and allow policies",
            async {
                admin.delete_policy(&key("x/server-deny")).await?;
                admin.delete_policy(&key("x/server-allow")).await.map(drop)
            },
            expected,
        )
        .await?,
    );
    let expected = both(&c, "x/client", "x/peer", 80, true);
    times.push(
        timed(
            &mut c,
            "delete egress policy",
            async { admin.delete_policy(&key("x/client-egress")).await.map(drop) },
            expected,
        )
        .await?,
    );

    let worst = times
        .iter()
        .map(|t| t.api_to_packets)
        .max()
        .unwrap_or_default();
    let mean = times.iter().map(|t| t.api_to_packets).sum::<Duration>() / times.len() as u32;
    report(format!(
        "enforce: {} changes, API call -> enforced in real packets: mean {:.1} ms, worst {:.1} ms",
        times.len(),
        mean.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
    ));
    for a in &c.agents {
        let m = a.metrics()?;
        assert_eq!(
            m.value("palisade_apply_errors_total", &[]),
            Some(0.0),
            "agent {}: apply errors",
            a.node()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pod_ip_never_inherits_the_old_pods_allows() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 2,
            pods: vec![
                LabPod::new(key("x/server"))
                    .on_node(0)
                    .with_ports([(80, Protocol::Tcp)]),
                LabPod::new(key("x/other"))
                    .on_node(0)
                    .with_ports([(80, Protocol::Tcp)]),
                // Lab slots whose addresses successive API pods get.
                LabPod::new(key("x/slot"))
                    .on_node(1)
                    .with_ports([(80, Protocol::Tcp)]),
                LabPod::new(key("x/slot2"))
                    .on_node(1)
                    .with_ports([(80, Protocol::Tcp)]),
            ],
            families: Families::DUAL,
        },
        namespaces: vec![("x".into(), labels(&[]))],
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    c.run_lab_pod(
        &key("x/server"),
        labels(&[("app", "server")]),
        tcp_ports(&[80]),
    )
    .await?;
    c.run_lab_pod(
        &key("x/other"),
        labels(&[("app", "other")]),
        tcp_ports(&[80]),
    )
    .await?;
    let on_slot = |c: &LabCluster, slot: &str, name: &str, l: &[(&str, &str)]| {
        RunPod::on_lab(&c.lab, &key(slot), &key(name), labels(l), tcp_ports(&[80]))
    };
    let old = on_slot(&c, "x/slot", "x/client-old", &[("role", "client")])?;
    c.kubelet.run_pod(&old).await?;
    c.admin
        .apply_policy(&policy(
            "x",
            "server-allow-clients",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]}],
            }),
        ))
        .await?;
    c.start_agents(|_| {}).await?;
    let slot_to_server = |c: &LabCluster, allowed: bool| both(c, "x/slot", "x/server", 80, allowed);

    // The client at the slot's address is allowed.
    probe_until(&c.lab, &slot_to_server(&c, true), PROBE, SETTLE)?;
    report("reuse: x/client-old (role=client) at the slot's IPs -> server: allowed");

    // 1. It completes: kubelet keeps its IPs in the status, but it no longer runs.
    c.kubelet.set_phase(&old.key, "Succeeded").await?;
    c.settle().await?;
    probe_until(&c.lab, &slot_to_server(&c, false), PROBE, SETTLE)?;
    report("reuse: x/client-old Succeeded (IPs still in its status) -> server: denied");

    // 2. A pod with other labels gets the same IPs while the completed pod still exists.
    let newcomer = on_slot(&c, "x/slot", "x/newcomer", &[("role", "intruder")])?;
    c.kubelet.run_pod(&newcomer).await?;
    c.settle().await?;
    probe_until(&c.lab, &slot_to_server(&c, false), PROBE, SETTLE)?;
    // Stable, not a lucky round: the rules are applied (settled) and stay so.
    for _ in 0..3 {
        palisade_kubetest::probe_now(&c.lab, &slot_to_server(&c, false), PROBE)?;
    }
    report(
        "reuse: x/newcomer (role=intruder) Running at the same IPs beside the completed pod -> server: denied",
    );

    // 3. Both go; the IPs are given to a fresh client: allowed again (reuse works both ways).
    c.kubelet.delete_pod(&old.key).await?;
    c.kubelet.delete_pod(&newcomer.key).await?;
    c.settle().await?;
    probe_until(&c.lab, &slot_to_server(&c, false), PROBE, SETTLE)?;
    let fresh = on_slot(&c, "x/slot", "x/client-new", &[("role", "client")])?;
    c.kubelet.run_pod(&fresh).await?;
    c.settle().await?;
    probe_until(&c.lab, &slot_to_server(&c, true), PROBE, SETTLE)?;
    // ...and deleted, the IP reused at once by an intruder: denied.
    c.kubelet.delete_pod(&fresh.key).await?;
    let intruder = on_slot(&c, "x/slot", "x/intruder", &[("role", "intruder")])?;
    c.kubelet.run_pod(&intruder).await?;
    c.settle().await?;
    probe_until(&c.lab, &slot_to_server(&c, false), PROBE, SETTLE)?;
    for _ in 0..3 {
        palisade_kubetest::probe_now(&c.lab, &slot_to_server(&c, false), PROBE)?;
    }
    report("reuse: x/client-new deleted, its IPs given to x/intruder at once -> server: denied");

    // 4. As the selected pod: a web pod open to all in an otherwise deny-all namespace.
    c.admin
        .apply_policy(&policy(
            "x",
            "deny-all-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ))
        .await?;
    c.admin
        .apply_policy(&policy(
            "x",
            "web-open",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
        ))
        .await?;
    let web = on_slot(&c, "x/slot2", "x/web-old", &[("app", "web")])?;
    c.kubelet.run_pod(&web).await?;
    c.settle().await?;
    probe_until(
        &c.lab,
        &both(&c, "x/other", "x/slot2", 80, true),
        PROBE,
        SETTLE,
    )?;
    c.kubelet.delete_pod(&web.key).await?;
    let db = on_slot(&c, "x/slot2", "x/db", &[("app", "db")])?;
    c.kubelet.run_pod(&db).await?;
    c.settle().await?;
    probe_until(
        &c.lab,
        &both(&c, "x/other", "x/slot2", 80, false),
        PROBE,
        SETTLE,
    )?;
    for _ in 0..3 {
        palisade_kubetest::probe_now(&c.lab, &both(&c, "x/other", "x/slot2", 80, false), PROBE)?;
    }
    report(
        "reuse: x/web-old (open to all) deleted, its IPs given to x/db in a deny-all namespace -> denied",
    );
    Ok(())
}
