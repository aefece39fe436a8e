//! Peak memory (and wall time) of the engine's big operations, for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p palisade-engine --example engine_memory -- build
//! cargo run --release -p palisade-engine --example engine_memory -- connlist
//! cargo run --release -p palisade-engine --example engine_memory -- scale 100000
//! ```
//!
//! `build`: the ClusterState of 10,000 pods in 500 namespaces with 5,000 policies (seed 42).
//! `connlist`: the connection list of 2,000 workloads without addresses (seed 7).
//! `scale N`: N pods and N policies (N/20 namespaces, about 100 pods per node, seed 42):
//! the build, one node's first compile (what an agent's initial sync computes), then 50 pod
//! relabels on that node each followed by the node's incremental compile (`LiveState`, as
//! the agent does), p50/p99.
//! Each phase runs in its own process so the peak (VmHWM) is that phase's. The figures are
//! printed after generating the objects (the baseline) and after the operation.

use std::time::Instant;

use palisade_engine::ClusterState;
use palisade_engine::connlist::connlist;
use palisade_testkit::{GenParams, generate_cluster};

/// A field of /proc/self/status in MiB (`VmHWM` = peak RSS, `VmRSS` = current).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn report(stage: &str) {
    println!(
        "{stage:<28} VmRSS {:>8.1} MiB   VmHWM (peak) {:>8.1} MiB",
        status_mib("VmRSS"),
        status_mib("VmHWM")
    );
}

fn main() {
    let phase = std::env::args().nth(1).unwrap_or_else(|| "build".into());
    match phase.as_str() {
        "build" => {
            let objects = generate_cluster(42, GenParams::large());
            report("generated 10k/500/5k");
            let start = Instant::now();
            let state = ClusterState::from_objects(&objects);
            let took = start.elapsed();
            report("built ClusterState");
            println!(
                "build took {took:?} ({} pods, {} policies)",
                state.pod_count(),
                state.policy_count()
            );
            drop(objects);
            report("objects dropped");
        }
        "connlist" => {
            let objects = generate_cluster(7, GenParams::workloads(2_000));
            let state = ClusterState::from_objects(&objects);
            drop(objects);
            report("built 2,000 workloads");
            let start = Instant::now();
            let list = connlist(&state);
            let took = start.elapsed();
            report("connlist computed");
            println!("connlist took {took:?}: {} connections", list.len());
        }
        "scale" => {
            let n: usize = std::env::args()
                .nth(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(100_000);
            let params = GenParams {
                namespaces: (n / 20).max(2),
                pods: n,
                policies: n,
                nodes: (n / 100).max(1),
                ..GenParams::default()
            };
            let objects = generate_cluster(42, params);
            report(&format!("generated {n}/{n}"));
            let start = Instant::now();
            let state = ClusterState::from_objects(&objects);
            println!(
                "build took {:?} ({} pods, {} policies)",
                start.elapsed(),
                state.pod_count(),
                state.policy_count()
            );
            drop(objects);
            report("built ClusterState");
            let mut live = palisade_engine::LiveState::from_state(state);
            let start = Instant::now();
            let rs = live.compile_node("node-0");
            println!(
                "first compile of node-0 took {:?}: {:?}",
                start.elapsed(),
                rs.stats()
            );
            report("compiled node-0");
            let local: Vec<palisade_model::Pod> =
                live.state().local_pods("node-0").cloned().collect();
            let mut times = Vec::new();
            for i in 0..50 {
                // Another app of its namespace: the policies selecting it change.
                let mut pod = local[i % local.len()].clone();
                let apps: Vec<String> = live
                    .state()
                    .pods_in_namespace(&pod.key.namespace)
                    .filter_map(|p| p.labels.get("app").cloned())
                    .filter(|a| Some(a) != pod.labels.get("app"))
                    .collect();
                match apps.get(i % apps.len().max(1)) {
                    Some(app) => pod.labels.insert("app".into(), app.clone()),
                    None => pod.labels.insert("bench-flip".into(), i.to_string()),
                };
                let start = Instant::now();
                live.apply(palisade_model::Object::Pod(pod));
                let _ = live.compile_node("node-0");
                times.push(start.elapsed());
            }
            times.sort();
            println!(
                "relabel + incremental compile of node-0: p50 {:?}, p99 {:?}",
                times[times.len() / 2],
                times[times.len() * 99 / 100]
            );
            report("after 50 relabels");
        }
        other => {
            eprintln!("unknown phase {other:?}: expected build, connlist or scale N");
            std::process::exit(2);
        }
    }
}
