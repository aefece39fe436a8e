//! deploy/ is part of the product: every manifest must parse as its Kubernetes type
//! (with no field the type does not know), and RBAC must grant what the agent watches.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use palisade_agent::source::REQUIRED_ACCESS;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((f.display().to_string(), v));
            }
        }
    }
    out
}

/// Parses as `T` and back: a field the type does not know would be lost, and fail here.
fn strict<T: DeserializeOwned + Serialize>(file: &str, v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, v,
        "{file}: fields lost or changed in a round trip through the type"
    );
    typed
}

#[test]
fn every_manifest_parses_as_its_type() {
    let docs = documents();
    let mut kinds = Vec::new();
    for (file, v) in &docs {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Namespace" => drop(strict::<Namespace>(file, v)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(file, v)),
            "ClusterRole" => drop(strict::<ClusterRole>(file, v)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(file, v)),
            "DaemonSet" => drop(strict::<DaemonSet>(file, v)),
            other => panic!("{file}: unexpected kind {other:?} in deploy/"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Namespace",
            "ServiceAccount"
        ]
    );
}

fn find<T: DeserializeOwned + Serialize>(kind: &str) -> T {
    let docs = documents();
    let (file, v) = docs.iter().find(|(_, v)| v["kind"] == kind).expect(kind);
    strict(file, v)
}

#[test]
fn rbac_grants_exactly_what_the_agent_watches() {
    let role: ClusterRole = find("ClusterRole");
    let rules = role.rules.unwrap_or_default();
    for (group, resource, verbs) in REQUIRED_ACCESS {
        for verb in verbs {
            assert!(
                rules
                    .iter()
                    .any(|r| r.api_groups.iter().flatten().any(|g| g == group)
                        && r.resources.iter().flatten().any(|x| x == resource)
                        && r.verbs.iter().any(|v| v == verb)),
                "ClusterRole lacks {verb} on {group}/{resource}"
            );
        }
    }
    // Least privilege: nothing beyond what is required.
    for r in &rules {
        for group in r.api_groups.iter().flatten() {
            for resource in r.resources.iter().flatten() {
                for verb in &r.verbs {
                    assert!(
                        REQUIRED_ACCESS.iter().any(|(g, res, vs)| g == group
                            && res == resource
                            && vs.contains(&verb.as_str())),
                        "ClusterRole grants {verb} on {group}/{resource}, which the agent does not need"
                    );
                }
            }
        }
    }
    let binding: ClusterRoleBinding = find("ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let sa: ServiceAccount = find("ServiceAccount");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn daemonset_runs_the_agent_unprivileged_with_probes() {
    let ds: DaemonSet = find("DaemonSet");
    let spec = ds.spec.template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name.as_deref(), Some("palisade-agent"));
    let c = &spec.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "agent");
    assert!(args.contains(&"--node=$(NODE_NAME)".to_string()));
    let env = c.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let sc = c.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.add.unwrap(), ["NET_ADMIN"]);
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    assert!(c.resources.as_ref().unwrap().requests.is_some());
    assert!(spec.tolerations.is_some());
}
