//! The compiled IR judged by its executable meaning ([`palisade_ir::eval`]), for tests
//! that compare it with the engine's verdicts.

use std::net::IpAddr;

use palisade_ir::eval::{Transport, judge_flow};
use palisade_ir::{NodeRuleset, Protocol};

/// The IR protocol for a model protocol.
pub fn ir_protocol(p: palisade_model::Protocol) -> Protocol {
    match p {
        palisade_model::Protocol::Tcp => Protocol::Tcp,
        palisade_model::Protocol::Udp => Protocol::Udp,
        palisade_model::Protocol::Sctp => Protocol::Sctp,
    }
}

/// Would the dataplanes programmed with `rulesets` let `src` open a connection to
/// `dst` on `protocol`/`port`? Panics if a ruleset breaks an IR invariant (a broken IR
/// must fail the test, not read as a deny).
pub fn ir_allows(
    rulesets: &[NodeRuleset],
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    for rs in rulesets {
        if let Err(e) = rs.validate() {
            panic!("node {}: {e}", rs.node);
        }
    }
    judge_flow(rulesets, src, dst, Transport::Port(protocol, port)).allowed()
}
