//! The upstream Kubernetes NetworkPolicy e2e cases (testdata/conformance/upstream-e2e.yaml)
//! driven through a real kube-apiserver, enforced by real `palisade agent` processes (one
//! per lab node) and judged by real packets: what an upstream e2e run against a cluster
//! with Palisade as its NetworkPolicy implementation would do.
//!
//! Per case: every policy of the previous case is deleted, namespace labels reset, the nine
//! model pods (re)created with the case's container ports when they change (else only
//! their labels reset), the lab's pods serve the case's ports. Per step, through the API,
//! in the step's order: namespace label patches, pod label patches, policy deletes, policy
//! creates or replaces (placeholders substituted with the pods' lab addresses of the run's
//! family). Then the harness waits until both agents have applied exactly as many watch
//! events as the writes caused (their /metrics), and probes each matrix with real
//! packets, re-probing a matrix until it matches or 10 s pass.
//!
//! The pods are dual-stack in the API (status.podIPs); one test per family probes and
//! substitutes that family. SCTP cells are skipped: this kernel has no SCTP sockets.
//! `PALISADE_CONFORMANCE_CASES=netpol-01,netpol-07` runs only those cases. IPv4 runs once
//! more with the agents on `--backend=ebpf`.
//!
//! Root only; see `palisade_kubetest::e2e_prerequisites`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_conformance::{CaseFile, ServedPort, substitute};
use palisade_kubetest::{
    Error, Expectation, LabCluster, LabClusterSpec, PodPort, Result, e2e_prerequisites,
    probe_rounds, repo_root, report,
};
use palisade_lab::{Families, LabPod, LabSpec};
use palisade_model::{IpFamily, Key, Protocol};

/// Bound of one probe (a denied cell takes this long).
const PROBE: Duration = Duration::from_secs(1);
/// How long a matrix may take to match after the agents applied the step.
const MATRIX_DEADLINE: Duration = Duration::from_secs(10);

fn pod_ports(ports: &[ServedPort]) -> Vec<PodPort> {
    ports
        .iter()
        .map(|p| PodPort::new(Some(&p.name), p.port, p.protocol))
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
    matrices: usize,
    reprobed: usize,
    failures: Vec<String>,
    /// Mismatch reports of the first wrong cells (at most [`MISMATCH_REPORTS`]).
    reports: Vec<String>,
}

/// Wrong cells explained in full in a failure (each report is long).
const MISMATCH_REPORTS: usize = 5;

/// One node's agent as a mismatch report shows it: what it applied, and how.
fn agent_summary(agent: &palisade_kubetest::Agent) -> String {
    match agent.metrics() {
        Ok(m) => format!(
            "agent: {} applies that changed the kernel, {} apply errors, {} events applied (mean event -> applied {:.1} ms), ruleset {} rules, {} sets; uninterpretable objects {}",
            m.applies(),
            m.value("palisade_apply_errors_total", &[]).unwrap_or(0.0),
            m.events_applied(),
            m.mean_event_to_applied().unwrap_or_default().as_secs_f64() * 1000.0,
            m.value("palisade_ruleset_rules", &[]).unwrap_or(0.0),
            m.value("palisade_ruleset_sets", &[]).unwrap_or(0.0),
            m.value("palisade_uninterpretable_objects", &[])
                .unwrap_or(0.0),
        ),
        Err(e) => format!("agent metrics unavailable: {e}"),
    }
}

/// `backend`: the agents' `--backend` argument (`None`: the default, nft).
async fn run(family: IpFamily, backend: Option<&str>) -> Result<()> {
    let path = repo_root().join("testdata/conformance/upstream-e2e.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    let file = CaseFile::parse(&text, &path.display().to_string()).map_err(Error::other)?;
    let only: Vec<String> = std::env::var("PALISADE_CONFORMANCE_CASES")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let cases: Vec<_> = file
        .cases
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.id))
        .collect();
    let started = Instant::now();

    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 2,
            pods: file.pods.iter().map(|k| LabPod::new(k.clone())).collect(),
            families: Families::DUAL,
        },
        namespaces: file
            .namespaces
            .iter()
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect(),
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    let addresses: BTreeMap<Key, IpAddr> = file
        .pods
        .iter()
        .map(|k| (k.clone(), c.lab.pod_ip(k, family).expect("lab address")))
        .collect();
    let namespaces: Vec<String> = file.namespaces.keys().cloned().collect();

    let Some(first) = cases.first() else {
        return Err(Error::other("no case selected"));
    };
    let mut ports = first.served_ports.clone();
    for k in &file.pods {
        c.run_lab_pod(k, file.pod_labels[k].clone(), pod_ports(&ports))
            .await?;
    }
    c.start_agents(|s| s.extra_args.extend(backend.map(str::to_string)))
        .await?;
    // Count-only observer chains, for the mismatch reports of wrong cells.
    palisade_lab::diagnose::install_flow_counters(&c.lab).map_err(Error::other)?;
    let setup = started.elapsed();

    let n = file.pods.len();
    let mut tally = Tally::default();
    for case in &cases {
        // Back to the initial state, with this case's ports.
        for ns in &namespaces {
            c.admin.delete_all_policies(ns).await?;
        }
        for (ns, l) in &file.namespaces {
            c.admin.set_namespace_labels(ns, l).await?;
        }
        if case.served_ports != ports {
            ports = case.served_ports.clone();
            for k in &file.pods {
                c.kubelet.delete_pod(k).await?;
                c.run_lab_pod(k, file.pod_labels[k].clone(), pod_ports(&ports))
                    .await?;
            }
        } else {
            for k in &file.pods {
                c.kubelet.set_pod_labels(k, &file.pod_labels[k]).await?;
            }
        }
        let served: Vec<(u16, Protocol)> = ports.iter().map(|p| (p.port, p.protocol)).collect();
        for k in &file.pods {
            c.lab.serve(k, &served).map_err(Error::other)?;
        }

        for (si, step) in case.steps.iter().enumerate() {
            let at = format!("{} step {}", case.id, si + 1);
            for (ns, l) in &step.namespace_labels {
                c.admin.set_namespace_labels(ns, l).await?;
            }
            for (k, l) in &step.pod_labels {
                c.kubelet.set_pod_labels(k, l).await?;
            }
            for k in &step.delete {
                c.admin.delete_policy(k).await?;
            }
            for doc in &step.apply {
                let mut doc = doc.clone();
                substitute(&mut doc, &addresses).map_err(|e| Error::other(format!("{at}: {e}")))?;
                c.admin
                    .apply_policy(&doc)
                    .await
                    .map_err(|e| Error::other(format!("{at}: {e}")))?;
            }
            c.settle()
                .await
                .map_err(|e| Error::other(format!("{at}: {e}\n{}", c.agent_logs(20))))?;

            for probe in &step.probes {
                let cells = if file.diagonal_asserted {
                    n * n
                } else {
                    n * (n - 1)
                };
                if probe.protocol == Protocol::Sctp {
                    tally.skipped += cells;
                    continue;
                }
                let mut expected = Vec::new();
                for (i, src) in file.pods.iter().enumerate() {
                    for (j, dst) in file.pods.iter().enumerate() {
                        if i == j && !file.diagonal_asserted {
                            continue;
                        }
                        expected.push(Expectation {
                            from: src.clone(),
                            to: addresses[dst],
                            port: probe.port,
                            protocol: probe.protocol,
                            allowed: probe.expect[i][j],
                        });
                    }
                }
                let rounds = probe_rounds(&c.lab, &expected, PROBE, MATRIX_DEADLINE)?;
                tally.matrices += 1;
                tally.reprobed += usize::from(rounds.rounds > 1);
                if std::env::var("PALISADE_CONFORMANCE_DEBUG").is_ok() {
                    for (i, o) in &rounds.first_round_wrong {
                        report(format!(
                            "{at} {}/{}: first round: {}, got {o}",
                            probe.port, probe.protocol, expected[*i]
                        ));
                    }
                }
                tally.failed += rounds.wrong.len();
                tally.passed += expected.len() - rounds.wrong.len();
                for line in rounds.describe_wrong(&expected) {
                    tally
                        .failures
                        .push(format!("{at} {}/{}: {line}", probe.port, probe.protocol));
                }
                // What each node's agent and kernel held, for the first few wrong cells.
                let agent_state = |i: usize| agent_summary(&c.agents[i]);
                let room = MISMATCH_REPORTS.saturating_sub(tally.reports.len());
                tally.reports.extend(rounds.explain_wrong(
                    &c.lab,
                    &expected,
                    PROBE,
                    &agent_state,
                    room,
                ));
            }
        }
    }
    report(format!(
        "conformance via API ({family}): {} cases, {} matrices ({} needed a re-probe): {} cells ok, {} wrong, {} skipped (SCTP); setup {} s, total {} s",
        cases.len(),
        tally.matrices,
        tally.reprobed,
        tally.passed,
        tally.failed,
        tally.skipped,
        setup.as_secs(),
        started.elapsed().as_secs()
    ));
    report(format!(
        "conformance via API ({family}): ledger {} events",
        c.ledger.get()
    ));
    for a in &c.agents {
        let m = a.metrics()?;
        report(format!(
            "conformance via API ({family}): agent {}: {} applies, {} events, mean event->applied {:.1} ms, {} apply errors",
            a.node(),
            m.applies(),
            m.events_applied(),
            m.mean_event_to_applied().unwrap_or_default().as_secs_f64() * 1000.0,
            m.value("palisade_apply_errors_total", &[]).unwrap_or(0.0)
        ));
    }
    assert!(
        tally.failures.is_empty(),
        "{} cells differ from the upstream expectations:\n  {}\n\nMismatch reports:\n{}",
        tally.failures.len(),
        tally.failures.join("\n  "),
        tally.reports.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_conformance_via_api_ipv4() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    run(IpFamily::V4, None).await
}

/// The eBPF dataplane through the API (issue 12); one family, the other is covered by its
/// contract suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_conformance_via_api_ipv4_ebpf() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    run(IpFamily::V4, Some("--backend=ebpf")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_conformance_via_api_ipv6() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    run(IpFamily::V6, None).await
}
