//! Peak memory (and wall time) of the engine's big operations, for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p palisade-engine --example engine_memory -- build
//! cargo run --release -p palisade-engine --example engine_memory -- connlist
//! ```
//!
//! `build`: the ClusterState of 10,000 pods in 500 namespaces with 5,000 policies (seed 42).
//! `connlist`: the connection list of 2,000 workloads without addresses (seed 7).
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
        other => {
            eprintln!("unknown phase {other:?}: expected build or connlist");
            std::process::exit(2);
        }
    }
}
