//! # palisade-kubetest
//!
//! Dev-only harness for end-to-end tests of the agent against a **real** Kubernetes API
//! server. It owns:
//!
//! - [`ControlPlane`]: etcd and kube-apiserver (built from source by
//!   `scripts/build-k8s.sh`) on free loopback ports with fresh certificates, RBAC on, an
//!   admin client, agent kubeconfigs with the deploy/ identity (or one rule short of it),
//!   API server stop/start and etcd compaction.
//! - [`TcpProxy`]: a loopback proxy between agent and API server that can cut connections.
//! - [`Kubelet`] and [`Admin`]: the writes of kubelet/CNI (pods bound to a lab node, then
//!   `Running` with the lab's addresses) and of a user (namespaces, NetworkPolicies),
//!   counted in an [`EventLedger`] so a test can wait for an agent to catch up exactly.
//! - [`Agent`]: the real `palisade agent` process, its /readyz and /metrics.
//! - [`LabCluster`]: all of it around a `palisade_lab::Lab`, one agent per lab node.
//! - [`probe_until`] and [`EchoConnection`]: real packets, bounded.
//!
//! Must not: send traffic anywhere but 127.0.0.1 and the lab's own namespaces; wait without
//! a bound; leave a process, folder or namespace behind (every owner cleans up on `Drop`,
//! children also die with the test process: see [`process`]). It makes no policy decision:
//! expectations come from the tests.
//!
//! Start reading at [`LabCluster::start`], then [`ControlPlane::start_with`].
//!
//! The agent under test runs in the host's network namespace and applies its rules in its
//! lab node's namespace (`--netns`): it reaches the API server on 127.0.0.1 as a
//! hostNetwork DaemonSet pod reaches its API endpoint, nothing has to be routed between the
//! lab and the host (the lab installs nothing in the host's namespace), and the rules still
//! see exactly that node's pod traffic.
//!
//! Environment:
//! - `PALISADE_KUBE_APISERVER` + `PALISADE_ETCD`: binaries to use (default: the
//!   `scripts/build-k8s.sh` cache, built when missing; see [`k8s_binaries`]).
//! - `PALISADE_BIN`: the `palisade` binary to test (default: built; see [`palisade_binary`]).
//! - `PALISADE_KUBETEST_KEEP=1`: keep each control plane's folder (logs of etcd, the API
//!   server and every agent, kubeconfigs) instead of deleting it.
//! - `PALISADE_REQUIRE_ROOT_TESTS=1`: a missing prerequisite fails instead of skipping.

pub mod agent;
pub mod binaries;
pub mod certs;
pub mod control_plane;
pub mod error;
pub mod fixture;
pub mod http;
pub mod kubelet;
pub mod netns;
pub mod probe;
pub mod process;
pub mod proxy;

pub use agent::{Agent, AgentSpec, Metrics};
pub use binaries::{k8s_binaries, palisade_binary, repo_root};
pub use control_plane::{ControlPlane, ControlPlaneOptions, free_addr, free_port};
pub use error::{Error, Result};
pub use fixture::{LabCluster, LabClusterSpec};
pub use kubelet::{Admin, EventLedger, Kubelet, PodPort, RunPod, labels};
pub use netns::{EchoConnection, in_netns};
pub use probe::{
    ContinuousProber, Expectation, FlowCheck, ProberReport, Rounds, Settled, probe_now,
    probe_rounds, probe_until, time_flip,
};
pub use proxy::TcpProxy;

/// Prints a line past the test harness's output capture (measurements a run should show).
pub fn report(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// For end-to-end tests: `true` when they can run (root, network namespaces, nft, and the
/// kube-apiserver/etcd binaries, built if need be). Otherwise prints why not and returns
/// `false`, unless `PALISADE_REQUIRE_ROOT_TESTS=1` (CI), which makes it a panic: there, a
/// real API server is mandatory.
pub fn e2e_prerequisites() -> bool {
    if !palisade_lab::can_run_root_tests(true) {
        return false;
    }
    match k8s_binaries() {
        Ok(_) => true,
        Err(e) if std::env::var("PALISADE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") => {
            panic!("PALISADE_REQUIRE_ROOT_TESTS=1 but kube-apiserver/etcd are not available: {e}")
        }
        Err(e) => {
            report(format!(
                "SKIPPED (set PALISADE_REQUIRE_ROOT_TESTS=1 to fail instead): kube-apiserver/etcd: {e}"
            ));
            false
        }
    }
}
