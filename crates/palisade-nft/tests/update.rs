//! What a change renders to: only the objects it touches, in an order nft accepts.

mod common;

use common::{Rs, peers, ports, ruleset, tcp};
use palisade_ir::Direction::Ingress;
use palisade_ir::NodeRuleset;
use palisade_nft::{Config, render_update};

fn update(a: &NodeRuleset, b: &NodeRuleset) -> Vec<String> {
    render_update(a, b, &Config::default())
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

/// `n` web pods with the same rules (one class), allowing `front` (one definition).
fn web(n: usize, front: &[&str]) -> Rs {
    let mut rs = ruleset();
    for i in 0..n {
        let name = format!("default/web-{i}");
        rs = rs
            .endpoint(&name, &[&format!("10.0.1.{}", 10 + i)])
            .isolate(&name, Ingress, &["default/allow-frontend"])
            .allow_in(
                &name,
                Ingress,
                Some("frontend pods"),
                Some(peers(front)),
                Some(ports(&[tcp(8080, 8080)])),
                "default/allow-frontend",
                0,
            );
    }
    rs
}

#[test]
fn unchanged_ruleset_renders_nothing() {
    let rs = web(3, &["10.0.2.10"]).build();
    assert!(update(&rs, &rs).is_empty());
}

#[test]
fn pod_joining_a_selector_shared_by_many_endpoints_is_one_element_in_one_map() {
    let a = web(20, &["10.0.2.10", "10.0.2.20"]).build();
    let b = web(20, &["10.0.2.10", "10.0.2.20", "10.0.2.30"]).build();
    let lines = update(&a, &b);
    assert_eq!(count(&lines, "add map"), 1, "{lines:#?}");
    // One element: the new address, jumping to the chain of the rules it matches.
    assert_eq!(count(&lines, "\t"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "10.0.2.30 : jump group_"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "chain"), 0, "no chain is touched: {lines:#?}");
    assert_eq!(count(&lines, "rule"), 0, "{lines:#?}");
    assert_eq!(
        count(&lines, "flush"),
        0,
        "an addition never flushes: {lines:#?}"
    );
}

#[test]
fn pod_leaving_a_selector_redeclares_its_class_map_and_touches_no_chain() {
    let a = web(5, &["10.0.2.10", "10.0.2.20"]).build();
    let b = web(5, &["10.0.2.10"]).build();
    let lines = update(&a, &b);
    let flush = position(&lines, "flush map");
    assert!(flush < position(&lines, "add map"), "{lines:#?}");
    assert_eq!(count(&lines, "chain"), 0, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("10.0.2.20")), "{lines:#?}");
}

#[test]
fn new_rule_rewrites_only_its_endpoint_chain() {
    let a = web(3, &["10.0.2.10"]).build();
    let b = web(3, &["10.0.2.10"])
        .allow(
            "default/web-1",
            Ingress,
            Some(peers(&["10.0.3.0/24"])),
            None,
            "default/extra",
            0,
        )
        .build();
    let lines = update(&a, &b);
    assert_eq!(count(&lines, "flush chain"), 1, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("flush chain") && l.contains("ingress_default_web_1_")),
        "{lines:#?}"
    );
    // The new rule gets its own counting chain, declared before the map that jumps to it.
    let chain = position(&lines, "add chain inet palisade allow_");
    assert!(chain < position(&lines, "add map"), "{lines:#?}");
}

#[test]
fn removed_endpoint_leaves_the_dispatch_map_before_its_chain_goes() {
    let a = web(2, &["10.0.2.10"]).build();
    let b = Rs(a.clone()).remove_endpoint("default/web-1").build();
    let lines = update(&a, &b);
    let leave = position(
        &lines,
        "delete element inet palisade ingress_v4 { 10.0.1.11 }",
    );
    let gone = position(&lines, "delete chain inet palisade ingress_default_web_1_");
    assert!(leave < gone, "{lines:#?}");
    assert_eq!(
        count(&lines, "delete map"),
        0,
        "the class is still used by web-0: {lines:#?}"
    );
}

#[test]
fn reused_ip_moves_between_endpoints_in_one_update() {
    let a = ruleset()
        .endpoint("default/old", &["10.0.1.5"])
        .isolate("default/old", Ingress, &["default/deny-all"])
        .build();
    let b = ruleset()
        .endpoint("default/new", &["10.0.1.5"])
        .isolate("default/new", Ingress, &["default/deny-all"])
        .build();
    let lines = update(&a, &b);
    let leave = position(
        &lines,
        "delete element inet palisade ingress_v4 { 10.0.1.5 }",
    );
    let join = position(&lines, "10.0.1.5 : jump ingress_default_new_");
    assert!(leave < join, "{lines:#?}");
}
