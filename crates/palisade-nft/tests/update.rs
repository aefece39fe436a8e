//! `render_update` without a kernel: what a change renders to, and in which order.

mod common;

use common::{Rs, frontend, peers, ports, ruleset, shared_peer_set, tcp};
use palisade_ir::Direction::{Egress, Ingress};
use palisade_ir::NodeRuleset;
use palisade_nft::{Config, render_update};

fn update(a: &NodeRuleset, b: &NodeRuleset) -> Vec<String> {
    render_update(a, b, &Config::default())
        .lines()
        .map(str::to_string)
        .collect()
}

/// Index of the first line containing `needle`; panics (showing the script) if none.
fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

fn web(front: Vec<&str>) -> Rs {
    ruleset()
        .endpoint("default/web", &["10.0.1.10"])
        .isolate("default/web", Ingress, &["default/allow-frontend"])
        .allow(
            "default/web",
            Ingress,
            Some(peers(&front)),
            Some(ports(&[tcp(8080, 8080)])),
            "default/allow-frontend",
            0,
        )
}

#[test]
fn unchanged_ruleset_renders_nothing() {
    for (name, rs) in common::fixtures() {
        assert_eq!(render_update(&rs, &rs, &Config::default()), "", "{name}");
    }
}

#[test]
fn pod_joining_a_selector_is_one_element_addition() {
    // The IR names peer sets by content, so the set's IR name changes; the kernel set keeps
    // its name because the rules using it did not change.
    let a = web(vec!["10.0.2.5"]).build();
    let b = web(vec!["10.0.2.5", "10.0.2.9"]).build();
    assert_ne!(a.peer_sets.keys().next(), b.peer_sets.keys().next());
    let lines = update(&a, &b);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("add element inet palisade peer_")
            && lines[0].ends_with("_v4 { 10.0.2.9 }"),
        "{}",
        lines[0]
    );
}

#[test]
fn pod_joining_a_set_shared_by_many_endpoints_touches_no_chain() {
    let mut bigger = frontend();
    bigger
        .ranges
        .extend(peers(&["10.0.2.30", "fd00::30"]).ranges);
    bigger.ranges = common::normalize(bigger.ranges);
    let lines = update(&shared_peer_set(frontend()), &shared_peer_set(bigger));
    // Three endpoints share the set of `default/allow-frontend ingress[0]`; the egress policy
    // using the same peers has its own kernel set. Two sets, two families: four additions.
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("add element inet palisade peer_")),
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with("_v4 { 10.0.2.30 }"))
            .count(),
        2,
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with("_v6 { fd00::30 }"))
            .count(),
        2,
        "{lines:#?}"
    );
}

#[test]
fn pod_leaving_a_selector_is_one_element_deletion() {
    let a = web(vec!["10.0.2.5", "10.0.2.9"]).build();
    let b = web(vec!["10.0.2.5"]).build();
    let lines = update(&a, &b);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("delete element inet palisade peer_")
            && lines[0].ends_with("{ 10.0.2.9 }")
    );
}

#[test]
fn widened_range_deletes_the_old_interval_before_adding_the_new() {
    // 10.0.2.5 and 10.0.2.6 merge into one range 10.0.2.5-10.0.2.6 (a /31 would need .4).
    let a = web(vec!["10.0.2.5"]).build();
    let b = web(vec!["10.0.2.5", "10.0.2.6"]).build();
    let lines = update(&a, &b);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("delete element") && lines[0].ends_with("{ 10.0.2.5 }"));
    assert!(lines[1].starts_with("add element") && lines[1].ends_with("{ 10.0.2.5-10.0.2.6 }"));
}

#[test]
fn named_port_split_keeps_each_set_apart() {
    // §8: one egress rule resolved into two; a pod joining the 8080 group changes one set.
    let build = |group_8080: &[&str]| {
        ruleset()
            .endpoint("default/client", &["10.0.1.60"])
            .isolate("default/client", Egress, &["default/to-http"])
            .allow(
                "default/client",
                Egress,
                Some(peers(group_8080)),
                Some(ports(&[tcp(8080, 8080)])),
                "default/to-http",
                0,
            )
            .allow(
                "default/client",
                Egress,
                Some(peers(&["10.0.2.2"])),
                Some(ports(&[tcp(9090, 9090)])),
                "default/to-http",
                0,
            )
            .build()
    };
    let a = build(&["10.0.2.1"]);
    let b = build(&["10.0.2.1", "10.0.2.7"]);
    let lines = update(&a, &b);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("add element") && lines[0].ends_with("{ 10.0.2.7 }"));
    // The element went to the set the 8080 rule uses.
    let full = palisade_nft::render_full(&b, &Config::default());
    let mut port_8080 = None;
    let mut last_set = "";
    for line in full.lines() {
        if let Some(rest) = line.trim().strip_prefix("set ") {
            last_set = rest.trim_end_matches(" {");
        }
        if line.trim() == "tcp . 8080," {
            port_8080 = Some(last_set);
        }
    }
    let port_8080 = port_8080.expect("a port set with tcp . 8080");
    let set = lines[0].split_whitespace().nth(4).unwrap();
    let rule = full
        .lines()
        .find(|l| l.contains(&format!("@{set} ")))
        .expect("rule using the set");
    assert!(rule.contains(&format!("@{port_8080} ")), "{rule}");
}

#[test]
fn new_rule_rewrites_only_its_chain() {
    let base = shared_peer_set(frontend());
    let mut changed = base.clone();
    let extra = Rs(changed.clone())
        .allow(
            "default/b",
            Ingress,
            Some(peers(&["10.0.5.5"])),
            None,
            "default/allow-more",
            0,
        )
        .build();
    changed = extra;
    let lines = update(&base, &changed);
    let flushes: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("flush chain"))
        .collect();
    assert_eq!(flushes.len(), 1, "{lines:#?}");
    assert!(flushes[0].contains("ingress_default_b_"));
    // New sets come first, then the chain is refilled.
    let add_set = position(&lines, "add set");
    let flush = position(&lines, "flush chain");
    assert!(add_set < flush, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("default_a_") && !l.contains("default_c_")),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.starts_with("delete")), "{lines:#?}");
}

#[test]
fn removed_endpoint_leaves_the_maps_before_its_chain_goes() {
    let a = common::combined();
    let b = Rs(a.clone()).remove_endpoint("default/dual").build();
    let lines = update(&a, &b);
    let unmap = position(
        &lines,
        "delete element inet palisade ingress_v4 { 10.0.1.40 }",
    );
    position(
        &lines,
        "delete element inet palisade ingress_v6 { fd00::40 }",
    );
    let delete_chain = position(&lines, "delete chain inet palisade ingress_default_dual_");
    assert!(unmap < delete_chain, "{lines:#?}");
    // Its sets are used by nobody else: deleted last, after the chains using them.
    let delete_set = position(&lines, "delete set");
    assert!(delete_chain < delete_set, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.starts_with("add ")), "{lines:#?}");
}

#[test]
fn reused_ip_leaves_the_old_pod_before_joining_the_new() {
    // §10: the deleted pod's address goes to a new pod, which must not inherit its chain.
    let a = ruleset()
        .endpoint("default/old", &["10.0.1.5"])
        .isolate("default/old", Ingress, &["default/deny-all"])
        .build();
    let b = ruleset()
        .endpoint("default/new", &["10.0.1.5"])
        .isolate("default/new", Ingress, &["default/deny-all"])
        .build();
    let lines = update(&a, &b);
    let del = position(
        &lines,
        "delete element inet palisade ingress_v4 { 10.0.1.5 }",
    );
    let add = position(
        &lines,
        "add element inet palisade ingress_v4 { 10.0.1.5 : jump ingress_default_new_",
    );
    let add_chain = position(&lines, "add chain inet palisade ingress_default_new_");
    let del_chain = position(&lines, "delete chain inet palisade ingress_default_old_");
    assert!(
        add_chain < add && del < add && add < del_chain,
        "{lines:#?}"
    );
}

#[test]
fn isolation_lifted_removes_chain_and_entry() {
    let a = ruleset()
        .endpoint("default/db", &["10.0.1.5"])
        .isolate("default/db", Ingress, &["default/deny-all"])
        .build();
    let b = ruleset().endpoint("default/db", &["10.0.1.5"]).build();
    let lines = update(&a, &b);
    assert_eq!(
        lines
            .iter()
            .map(|l| l
                .split(" { ")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "))
            .collect::<Vec<_>>(),
        ["delete element", "flush chain", "delete chain"],
        "{lines:#?}"
    );
}
