//! deploy/01-rbac.yaml against a real kube-apiserver with RBAC on: the agent running as
//! the deploy/ ServiceAccount becomes ready, and with any one rule of its ClusterRole
//! removed it never does (it keeps retrying the kind it may not list, and says why).
//!
//! Root only (the agent applies its rules in a lab node's netns); see
//! `palisade_kubetest::e2e_prerequisites`.

use std::time::{Duration, Instant};

use palisade_kubetest::control_plane::deploy_cluster_role_rules;
use palisade_kubetest::{Agent, AgentSpec, ControlPlane, Error, Result, e2e_prerequisites, report};
use palisade_lab::{Families, Lab, LabPod, LabSpec};

/// The kind the agent's watcher names (its metrics label) for a rule's resource.
fn kind_of(resource: &str) -> &'static str {
    match resource {
        "namespaces" => "Namespace",
        "pods" => "Pod",
        "networkpolicies" => "NetworkPolicy",
        other => panic!("deploy's ClusterRole has an unexpected resource {other}"),
    }
}

/// How long an agent without a needed permission may take to show it keeps failing.
const NEGATIVE_WINDOW: Duration = Duration::from_secs(20);

/// Each agent without a needed permission is watched at least this long (30 times what the
/// agent with every permission needs to become ready) and must never turn ready meanwhile.
const NEGATIVE_MIN_OBSERVATION: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_is_sufficient_and_every_rule_is_necessary() -> Result<()> {
    if !e2e_prerequisites() {
        return Ok(());
    }
    palisade_lab::install_signal_cleanup().map_err(Error::other)?;
    let t0 = Instant::now();
    let cp = ControlPlane::start().await?;
    report(format!(
        "rbac: control plane ready after {} ms",
        t0.elapsed().as_millis()
    ));
    let lab = Lab::create(LabSpec {
        nodes: 1,
        pods: vec![LabPod::new("x/a".parse().expect("key"))],
        families: Families::V4_ONLY,
    })
    .map_err(Error::other)?;
    let netns = lab.node_netns(0);

    let rules = deploy_cluster_role_rules()?;
    assert_eq!(
        rules.len(),
        3,
        "deploy's ClusterRole: one rule per watched kind"
    );
    // All agents at once: the negative ones have the whole window to (wrongly) turn ready.
    let mut negatives = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let resource = rule["resources"][0].as_str().unwrap_or_default();
        let kubeconfig = cp.agent_kubeconfig_without_rule(i).await?;
        let mut spec = AgentSpec::new("node-0", &kubeconfig, Some(netns), cp.dir())?;
        spec.table = Some(format!("palisade-rbac-{i}"));
        negatives.push((resource.to_string(), kind_of(resource), Agent::spawn(spec)?));
    }
    let spawned = Instant::now();
    let full = cp.agent_kubeconfig().await?;
    let mut positive = Agent::spawn(AgentSpec::new("node-0", &full, Some(netns), cp.dir())?)?;
    let took = positive.wait_ready(Duration::from_secs(30)).await?;
    report(format!(
        "rbac: agent with deploy/ RBAC ready after {} ms",
        took.as_millis()
    ));

    for (resource, kind, agent) in &mut negatives {
        let started = Instant::now();
        // Until it has retried the forbidden kind twice, and for at least the minimum
        // observation time, /readyz must never say ready.
        loop {
            let r = agent.readyz();
            if let Ok(r) = &r {
                assert_ne!(
                    r.status,
                    200,
                    "agent without the {resource} rule became ready:\n{}",
                    agent.log_tail(30)
                );
            }
            let restarts = agent.metrics().map(|m| m.watch_restarts(kind)).unwrap_or(0);
            if restarts >= 2 && r.is_ok() && spawned.elapsed() >= NEGATIVE_MIN_OBSERVATION {
                break;
            }
            if started.elapsed() > NEGATIVE_WINDOW {
                return Err(Error::Timeout {
                    what: format!("agent without the {resource} rule retrying its {kind} watch"),
                    after: NEGATIVE_WINDOW,
                    detail: agent.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reason = agent.wait_not_ready(Duration::from_secs(5)).await?;
        assert!(
            reason.contains("first full sync"),
            "{resource}: unexpected /readyz reason {reason:?}"
        );
        let log = agent.log();
        assert!(
            log.contains("forbidden") && log.contains(resource.as_str()),
            "{resource}: the agent's log should name the forbidden resource:\n{}",
            agent.log_tail(30)
        );
        report(format!(
            "rbac: without the {resource} rule: not ready ({reason}), {kind} watch retried"
        ));
    }
    // The positive agent is still ready at the end: the negatives did not disturb it.
    assert!(positive.is_ready(), "{}", positive.log_tail(30));
    Ok(())
}
