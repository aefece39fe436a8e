//! # palisade-testkit
//!
//! Dev-only helpers for testing and benchmarking Palisade. It owns:
//!
//! - [`build`]: concise constructors for the validated model objects (namespaces, pods,
//!   policies, rules, peers, selectors, port matches), so a test states a cluster in a few
//!   lines.
//! - [`reference`]: a plain reference evaluator written straight from the checklist of docs/SEMANTICS.md
//!   (§1-§11): no indexes, no caches, every question answered by looping over all objects.
//!   It is the oracle the indexed engine is compared against.
//! - [`interp`]: a tiny interpreter of the compiled rule IR ([`palisade_ir::NodeRuleset`])
//!   that decides a packet the way a dataplane would.
//! - [`generate`]: seeded generators of clusters: large realistic ones (benchmarks) and
//!   small colliding ones (property tests).
//!
//! Must not: depend on `palisade-engine` (the oracle has to stay independent of what it
//! judges), or be a dependency of anything but tests, benches and examples.
//!
//! Start reading at [`reference`], which is the checklist turned into code.

pub mod build;
pub mod generate;
pub mod interp;
pub mod ir_strategy;
pub mod reference;

pub use generate::{GenParams, generate_cluster, small_cluster};
pub use interp::{ir_allows, ir_protocol};
pub use reference::{RefEndpoint, RefSide, RefVerdict, reference_allows, reference_explain};
