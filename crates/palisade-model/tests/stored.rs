//! Objects the API server already stored (what the agent reads): interpreted as the API
//! server and other enforcers read them, never rejected by today's validation; what cannot
//! be interpreted fails closed.

use k8s_openapi::api::networking::v1 as net;
use palisade_model::convert::{stored_network_policy, stored_pod};
use palisade_model::{LabelSelector, Peer};

fn policy(spec: serde_json::Value) -> net::NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": spec,
    }))
    .expect("policy")
}

#[test]
fn sloppy_cidrs_mean_what_the_api_server_reads() {
    let p = stored_network_policy(&policy(serde_json::json!({
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [
            {"ipBlock": {"cidr": "198.18.1.5/24", "except": ["198.18.1.7/30"]}},
            {"ipBlock": {"cidr": "010.000.000.000/08"}},
            {"ipBlock": {"cidr": "::ffff:10.1.0.0/112"}},
        ]}],
    })));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let cidrs: Vec<String> = p.object.ingress[0]
        .peers
        .iter()
        .map(|peer| match peer {
            Peer::IpBlock(b) => format!("{} except {:?}", b.cidr, b.except),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        cidrs,
        [
            "198.18.1.0/24 except [198.18.1.4/30]",
            "10.0.0.0/8 except []",
            "10.1.0.0/16 except []"
        ]
    );
}

#[test]
fn what_validation_rejects_but_still_means_something_is_kept() {
    // Invalid label values in a selector (accepted on update when the old object had them),
    // a named port that breaks the naming rules: interpretable.
    let p = stored_network_policy(&policy(serde_json::json!({
        "podSelector": {"matchLabels": {"app": "not valid!"}},
        "ingress": [{"ports": [{"port": "HTTP"}]}],
    })));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.object.ingress.len(), 1);
}

#[test]
fn uninterpretable_rules_fail_closed() {
    // A peer nothing can read: every rule goes (policies only add allows), the pods it
    // selects stay isolated in its policy types.
    let p = stored_network_policy(&policy(serde_json::json!({
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}, {"from": [{"ipBlock": {"cidr": "10.0.0.300/32"}}]}],
        "egress": [{}],
    })));
    let fields: Vec<&str> = p.problems.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.ingress[1].from[0].ipBlock.cidr"]);
    assert!(p.object.ingress.is_empty() && p.object.egress.is_empty());
    assert!(p.object.isolates_ingress && p.object.isolates_egress);
    assert_eq!(p.object.pod_selector.match_labels["app"], "db");

    for (name, spec) in [
        (
            "unknown protocol",
            serde_json::json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
        ),
        (
            "peer with no field",
            serde_json::json!({"podSelector": {}, "ingress": [{"from": [{}]}]}),
        ),
        (
            "endPort below port",
            serde_json::json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
        ),
        (
            "except outside cidr",
            serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["11.0.0.0/24"]}}]}]}),
        ),
        (
            "unknown operator in a peer",
            serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}}]}]}),
        ),
    ] {
        let p = stored_network_policy(&policy(spec));
        assert!(!p.problems.is_empty(), "{name}");
        assert!(p.object.ingress.is_empty(), "{name}: {:?}", p.object);
        assert!(p.object.isolates_ingress, "{name}");
    }
}

#[test]
fn an_uninterpretable_selector_or_type_isolates_the_whole_namespace_both_ways() {
    for spec in [
        serde_json::json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}, "policyTypes": ["Egress"], "egress": [{}]}),
        serde_json::json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Sideways"], "ingress": [{}]}),
    ] {
        let p = stored_network_policy(&policy(spec.clone()));
        assert!(!p.problems.is_empty(), "{spec}");
        assert_eq!(p.object.pod_selector, LabelSelector::default(), "{spec}");
        assert!(
            p.object.isolates_ingress && p.object.isolates_egress,
            "{spec}"
        );
        assert!(
            p.object.ingress.is_empty() && p.object.egress.is_empty(),
            "{spec}"
        );
    }
}

#[test]
fn a_pod_address_nothing_reads_is_left_out_and_reported() {
    let pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "w", "namespace": "x"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::zz"}], "phase": "Running"},
    }))
    .unwrap();
    let p = stored_pod(&pod);
    assert_eq!(p.object.ips.len(), 1);
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert_eq!(p.problems[0].field, "status.podIPs[1]");
    // Leading zeros, as stored by a server without StrictIPCIDRValidation: decimal.
    let pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "w", "namespace": "x"},
        "status": {"podIP": "010.0.0.001"},
    }))
    .unwrap();
    let p = stored_pod(&pod);
    assert!(p.problems.is_empty());
    assert_eq!(p.object.ips[0].to_string(), "10.0.0.1");
}
