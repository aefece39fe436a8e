//! # palisade-lab
//!
//! Owns a small Kubernetes-like cluster made of network namespaces on this machine, for
//! testing dataplanes with real packets: one netns per node and per pod, a veth pair per pod
//! (`eth0` in the pod, `p<j>` in its node), nodes joined by their own veth links and routing
//! like a real Calico-style node (no bridge: /32 and /128 routes per pod, per-node pod
//! prefixes routed to the peer node). Every pod runs listeners on its ports (a probe server,
//! one thread of this process for all pods), and [`Lab::probe`] / [`Lab::probe_many`] make
//! bounded connection attempts from inside a pod. A backend's rules go into a node netns
//! ([`Lab::run_in_node`], e.g. `nft -f -`), where they see every packet to and from that
//! node's pods, same-node and cross-node alike.
//!
//! Must not: send traffic anywhere but between namespaces the lab created; install anything
//! (address, route, rule, sysctl) in the host's own network namespace; wait on anything
//! without a bound; leave anything behind. Every namespace is named `palisade-<labid>-...`
//! and deleted on `Drop` (so also when a test panics), by [`Lab::destroy`], by the signal
//! handler of [`install_signal_cleanup`], or, for leftovers of a killed process, by
//! [`down_all`] (`palisade lab down`). It makes no policy decisions and knows no backend.
//!
//! Addresses come from ranges that are never real: `198.18.0.0/15` (RFC 2544 benchmarking)
//! and the ULA `fd50:a15a:de::/48`; `Lab::create` refuses to run if the host itself uses
//! either. The full plan is in [`plan`].
//!
//! Every probe is a new flow (UDP source ports chosen by the lab, never reused while
//! conntrack may remember them; a reply counts only if it echoes the probe's nonce: see
//! `probe.rs`), so the steps of a run are independent. When a probe disagrees with the
//! engine, [`enforce::Enforcer::explain_probe`] and [`diagnose`] tell what the kernel held
//! and did for that flow.
//!
//! Start reading at [`Lab::create`] and [`LabSpec`], then [`Lab::probe_many`]; the
//! namespace plumbing is in `lab.rs` (`build`), the probe server in `server.rs`.
//!
//! Needs root, `ip` (iproute2) and, for rules, `nft`: see [`check_prerequisites`].

mod cmd;
pub mod diagnose;
pub mod enforce;
mod lab;
mod netns;
pub mod plan;
mod probe;
mod server;

use palisade_model::Key;

pub use lab::{Families, Lab, LabPod, LabSpec, RUN_TIMEOUT, ServeSummary};
pub use netns::{
    NETNS_PREFIX, check_lab_prerequisites, check_prerequisites, cleanup_live_labs,
    delete_netns_matching, down_all, install_signal_cleanup, list_netns,
};
pub use probe::{
    ConnectTiming, DEFAULT_PROBE_TIMEOUT, MAX_PARALLEL_PROBES, PORT_REUSE_AFTER, ProbeOutcome,
    ProbeRequest, ProbeTrace, UDP_SOURCE_PORTS,
};

/// Why SCTP ports are neither served nor probed.
pub const SCTP_SKIP_REASON: &str =
    "SCTP is not supported by the lab: this machine's kernel has no SCTP sockets";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab prerequisites missing: {}", .0.join("; "))]
    Prerequisites(Vec<String>),
    #[error("lab spec: {0}")]
    Spec(String),
    #[error("the host already uses the lab ranges {ranges}: {found}; refusing to create a lab")]
    HostOverlap { ranges: String, found: String },
    #[error("`{command}`: {reason}")]
    Command { command: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering netns {netns}: {source}")]
    Setns {
        netns: String,
        #[source]
        source: nix::Error,
    },
    #[error("probe server: {0}")]
    Server(String),
    #[error("the lab has no pod {0}")]
    UnknownPod(Key),
    #[error("the lab has no node {0}")]
    UnknownNode(usize),
}

/// For tests that need root and network namespaces: `true` when they can run; otherwise
/// prints why not and returns `false`, unless `PALISADE_REQUIRE_ROOT_TESTS=1` (CI), which
/// turns the skip into a panic.
pub fn can_run_root_tests(needs_nft: bool) -> bool {
    let checked = if needs_nft {
        check_prerequisites()
    } else {
        check_lab_prerequisites()
    };
    match checked {
        Ok(()) => true,
        Err(e) if std::env::var("PALISADE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") => {
            panic!("PALISADE_REQUIRE_ROOT_TESTS=1 but: {e}")
        }
        Err(e) => {
            use std::io::Write;
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED (set PALISADE_REQUIRE_ROOT_TESTS=1 to fail instead): {e}"
            );
            false
        }
    }
}
