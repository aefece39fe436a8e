//! # palisade-engine
//!
//! Owns every semantic decision of NetworkPolicy (docs/SEMANTICS.md, §1-§12): which pods a
//! policy selects, isolation, peers, ports (named, ranges), ipBlock/except, dual-stack, the
//! union of policies. It keeps an indexed [`ClusterState`] that is updated incrementally
//! (namespaces, pods, policies: upsert/delete), answers "is this flow allowed, and why"
//! ([`ClusterState::explain`]), computes whole-cluster connectivity ([`connlist`]), finds
//! suspicious policies ([`lint`]) and compiles the backend-neutral rule IR for a node
//! ([`ClusterState::compile_node`]).
//!
//! Must not: do I/O, spawn tasks, or know about any backend. Inputs are already-validated
//! [`palisade_model`] objects.
//!
//! Start reading at [`state`], then [`matching`] (the rules of §4-§8 in one place), then
//! [`verdict`].

pub mod connlist;
pub mod ir;
pub mod lint;
pub mod live;
pub mod matching;
pub mod ports;
pub mod state;
pub mod verdict;

pub use live::{Kind, LiveState};
pub use ports::PortRanges;
pub use state::ClusterState;
pub use verdict::{Endpoint, Explanation, Flow, SideVerdict};
