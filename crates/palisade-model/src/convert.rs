//! Kubernetes objects (`k8s-openapi` types) to the validated model, applying the API
//! server's validation (DESIGN.md checklist) and defaults. Used for files on disk and, by
//! the agent, for objects from the API, so both paths share one set of rules.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{FieldError, InvalidObject, ObjectRef};
use crate::labels::{LabelSelector, Labels, Operator, Requirement};
use crate::types::*;
use crate::validate;

/// Collects field errors under a path prefix.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), reason: reason.into() });
    }

    fn add_all(&mut self, field: &str, value: &str, reasons: Vec<String>) {
        for r in reasons {
            self.add(field, format!("Invalid value: {value:?}: {r}"));
        }
    }

    fn finish<T>(self, object: ObjectRef, value: T) -> Result<T, InvalidObject> {
        if self.0.is_empty() { Ok(value) } else { Err(InvalidObject { object, errors: self.0 }) }
    }
}

/// The namespace an object lives in; objects on disk without one land in `default`.
fn namespace_of(meta: &meta::ObjectMeta) -> String {
    meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
}

fn object_ref(kind: &str, meta: &meta::ObjectMeta, namespaced: bool) -> ObjectRef {
    let ns = namespaced.then(|| namespace_of(meta));
    ObjectRef::new(kind, ns.as_deref(), meta.name.as_deref().unwrap_or(""))
}

/// metadata.name, metadata.namespace and metadata.labels.
fn check_metadata(
    meta: &meta::ObjectMeta,
    namespaced: bool,
    name_rule: fn(&str) -> Vec<String>,
    errs: &mut Errors,
) {
    match meta.name.as_deref() {
        None | Some("") => errs.add("metadata.name", "Required value: name is required"),
        Some(name) => errs.add_all("metadata.name", name, name_rule(name)),
    }
    if namespaced {
        let ns = namespace_of(meta);
        errs.add_all("metadata.namespace", &ns, validate::dns1123_label(&ns));
    }
    if let Some(labels) = &meta.labels {
        check_labels(labels, "metadata.labels", errs);
    }
}

fn check_labels(labels: &BTreeMap<String, String>, path: &str, errs: &mut Errors) {
    for (k, v) in labels {
        errs.add_all(path, k, validate::qualified_name(k));
        errs.add_all(&format!("{path}[{k}]"), v, validate::label_value(v));
    }
}

fn label_selector(selector: &meta::LabelSelector, path: &str, errs: &mut Errors) -> LabelSelector {
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    check_labels(&match_labels, &format!("{path}.matchLabels"), errs);
    let mut match_expressions = Vec::new();
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = expr.values.clone().unwrap_or_default();
        let operator = match expr.operator.as_str() {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            other => {
                errs.add(
                    format!("{p}.operator"),
                    format!(
                        "Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \
                         \"Exists\", \"DoesNotExist\""
                    ),
                );
                None
            }
        };
        match operator {
            Some(Operator::In | Operator::NotIn) if values.is_empty() => errs.add(
                format!("{p}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            ),
            Some(Operator::Exists | Operator::DoesNotExist) if !values.is_empty() => errs.add(
                format!("{p}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            _ => {}
        }
        errs.add_all(&format!("{p}.key"), &expr.key, validate::qualified_name(&expr.key));
        for (j, v) in values.iter().enumerate() {
            errs.add_all(&format!("{p}.values[{j}]"), v, validate::label_value(v));
        }
        if let Some(operator) = operator {
            match_expressions.push(Requirement {
                key: expr.key.clone(),
                operator,
                values: values.into_iter().collect(),
            });
        }
    }
    LabelSelector { match_labels, match_expressions }
}

fn protocol(value: Option<&str>, path: &str, errs: &mut Errors) -> Protocol {
    match value {
        None => Protocol::Tcp,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            errs.add(
                path,
                format!(
                    "Unsupported value: {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                ),
            );
            Protocol::Tcp
        }
    }
}

fn policy_port(port: &net::NetworkPolicyPort, path: &str, errs: &mut Errors) -> PortMatch {
    let protocol = protocol(port.protocol.as_deref(), &format!("{path}.protocol"), errs);
    let end_path = format!("{path}.endPort");
    let spec = match (&port.port, port.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(end)) => {
            errs.add(
                end_path,
                format!("Invalid value: {end}: may not be specified when `port` is not specified"),
            );
            PortSpec::Any
        }
        (Some(IntOrString::Int(n)), end) => {
            errs.add_all(&format!("{path}.port"), &n.to_string(), validate::port_number(*n));
            if let Some(end) = end {
                if end < *n {
                    errs.add(
                        &end_path,
                        format!("Invalid value: {end}: must be greater than or equal to `port`"),
                    );
                }
                errs.add_all(&end_path, &end.to_string(), validate::port_number(end));
            }
            let from = (*n).clamp(0, 65535) as u16;
            let to = end.map_or(from, |e| e.clamp(0, 65535) as u16);
            PortSpec::Range { from, to }
        }
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                errs.add(
                    &end_path,
                    format!("Invalid value: {end}: may not be specified when `port` is non-numeric"),
                );
            }
            errs.add_all(&format!("{path}.port"), name, validate::port_name(name));
            PortSpec::Named(name.clone())
        }
    };
    PortMatch { protocol, port: spec }
}

fn ip_block(block: &net::IPBlock, path: &str, errs: &mut Errors) -> Option<IpBlock> {
    let cidr_path = format!("{path}.cidr");
    if block.cidr.is_empty() {
        errs.add(cidr_path, "Required value");
        return None;
    }
    let cidr = match validate::parse_cidr(&block.cidr) {
        Ok(c) => c,
        Err(e) => {
            errs.add(cidr_path, format!("Invalid value: {:?}: {e}", block.cidr));
            return None;
        }
    };
    let mut except = Vec::new();
    for (i, raw) in block.except.iter().flatten().enumerate() {
        let p = format!("{path}.except[{i}]");
        match validate::parse_cidr(raw) {
            Ok(e) if cidr.contains(&e.network()) && e.prefix_len() > cidr.prefix_len() => {
                except.push(e)
            }
            Ok(_) => errs.add(p, format!("Invalid value: {raw:?}: must be a strict subset of `cidr`")),
            Err(e) => errs.add(p, format!("Invalid value: {raw:?}: {e}")),
        }
    }
    Some(IpBlock { cidr, except })
}

fn peer(p: &net::NetworkPolicyPeer, path: &str, errs: &mut Errors) -> Option<Peer> {
    let set = [p.pod_selector.is_some(), p.namespace_selector.is_some(), p.ip_block.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 => {
            errs.add(path, "Required value: must specify a peer");
            return None;
        }
        n if n > 1 && p.ip_block.is_some() => {
            errs.add(path, "Forbidden: may not specify both ipBlock and another peer");
            return None;
        }
        _ => {}
    }
    if let Some(block) = &p.ip_block {
        return ip_block(block, &format!("{path}.ipBlock"), errs).map(Peer::IpBlock);
    }
    Some(Peer::Pods {
        namespace_selector: p
            .namespace_selector
            .as_ref()
            .map(|s| label_selector(s, &format!("{path}.namespaceSelector"), errs)),
        pod_selector: p
            .pod_selector
            .as_ref()
            .map(|s| label_selector(s, &format!("{path}.podSelector"), errs)),
    })
}

fn rule(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    path: &str,
    peer_field: &str,
    errs: &mut Errors,
) -> Rule {
    Rule {
        peers: peers
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, p)| peer(p, &format!("{path}.{peer_field}[{i}]"), errs))
            .collect(),
        ports: ports
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| policy_port(p, &format!("{path}.ports[{i}]"), errs))
            .collect(),
    }
}

/// Validates a NetworkPolicy and applies its defaults (checklist §2).
pub fn network_policy(p: &net::NetworkPolicy) -> Result<NetworkPolicy, InvalidObject> {
    let object = object_ref("NetworkPolicy", &p.metadata, true);
    let mut errs = Errors::default();
    check_metadata(&p.metadata, true, validate::dns1123_subdomain, &mut errs);
    let default_spec = net::NetworkPolicySpec::default();
    let spec = p.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .map(|s| label_selector(s, "spec.podSelector", &mut errs))
        .unwrap_or_default();
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(r.from.as_ref(), r.ports.as_ref(), &format!("spec.ingress[{i}]"), "from", &mut errs)
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(r.to.as_ref(), r.ports.as_ref(), &format!("spec.egress[{i}]"), "to", &mut errs)
        })
        .collect();
    let (isolates_ingress, isolates_egress) = match &spec.policy_types {
        None => (true, !egress.is_empty()),
        Some(types) => {
            if types.len() > 2 {
                errs.add("spec.policyTypes", "Invalid value: may not specify more than two policyTypes");
            }
            let mut ing = false;
            let mut eg = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ing = true,
                    "Egress" => eg = true,
                    other => errs.add(
                        format!("spec.policyTypes[{i}]"),
                        format!("Unsupported value: {other:?}: supported values: \"Ingress\", \"Egress\""),
                    ),
                }
            }
            // An empty list is defaulted by the API server like an absent one.
            if types.is_empty() { (true, !egress.is_empty()) } else { (ing, eg) }
        }
    };
    let policy = NetworkPolicy {
        key: Key::new(namespace_of(&p.metadata), p.metadata.name.clone().unwrap_or_default()),
        pod_selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
    };
    errs.finish(object, policy)
}

pub fn namespace(ns: &core::Namespace) -> Result<Namespace, InvalidObject> {
    let object = object_ref("Namespace", &ns.metadata, false);
    let mut errs = Errors::default();
    check_metadata(&ns.metadata, false, validate::dns1123_label, &mut errs);
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    let name = ns.metadata.name.clone().unwrap_or_default();
    errs.finish(object, Namespace::new(name, labels))
}

fn container_ports(spec: &core::PodSpec, path: &str, errs: &mut Errors) -> Vec<ContainerPort> {
    let mut ports = Vec::new();
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{path}.containers[{i}]"), c))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .enumerate()
                // Only restartable init containers (sidecars) keep serving.
                .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
                .map(|(i, c)| (format!("{path}.initContainers[{i}]"), c)),
        );
    for (cpath, c) in containers {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let pp = format!("{cpath}.ports[{j}]");
            errs.add_all(
                &format!("{pp}.containerPort"),
                &p.container_port.to_string(),
                validate::port_number(p.container_port),
            );
            if let Some(name) = &p.name {
                errs.add_all(&format!("{pp}.name"), name, validate::port_name(name));
            }
            let protocol = protocol(p.protocol.as_deref(), &format!("{pp}.protocol"), errs);
            ports.push(ContainerPort {
                name: p.name.clone(),
                port: p.container_port.clamp(0, 65535) as u16,
                protocol,
            });
        }
    }
    ports
}

fn pod_ips(status: Option<&core::PodStatus>, errs: &mut Errors) -> Vec<std::net::IpAddr> {
    let Some(status) = status else { return Vec::new() };
    let mut ips = Vec::new();
    match &status.pod_ips {
        Some(list) if !list.is_empty() => {
            for (i, ip) in list.iter().enumerate() {
                match validate::parse_ip(&ip.ip) {
                    Ok(a) => ips.push(a),
                    Err(e) => errs.add(format!("status.podIPs[{i}].ip"), format!("Invalid value: {:?}: {e}", ip.ip)),
                }
            }
        }
        _ => {
            if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
                match validate::parse_ip(ip) {
                    Ok(a) => ips.push(a),
                    Err(e) => errs.add("status.podIP", format!("Invalid value: {ip:?}: {e}")),
                }
            }
        }
    }
    if ips.len() == 2 && IpFamily::of(&ips[0]) == IpFamily::of(&ips[1]) || ips.len() > 2 {
        errs.add("status.podIPs", "Invalid value: must contain at most one IP per family");
    }
    ips
}

fn phase(status: Option<&core::PodStatus>) -> PodPhase {
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        Some("Pending") => PodPhase::Pending,
        // A pod on disk without status is taken as the running pod it describes.
        _ => PodPhase::Running,
    }
}

pub fn pod(p: &core::Pod) -> Result<Pod, InvalidObject> {
    let object = object_ref("Pod", &p.metadata, true);
    let mut errs = Errors::default();
    check_metadata(&p.metadata, true, validate::dns1123_subdomain, &mut errs);
    let default_spec = core::PodSpec::default();
    let spec = p.spec.as_ref().unwrap_or(&default_spec);
    let ports = container_ports(spec, "spec", &mut errs);
    let ips = pod_ips(p.status.as_ref(), &mut errs);
    let pod = Pod {
        key: Key::new(namespace_of(&p.metadata), p.metadata.name.clone().unwrap_or_default()),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node: spec.node_name.clone().filter(|n| !n.is_empty()),
        phase: phase(p.status.as_ref()),
        source: PodSource::Pod,
    };
    errs.finish(object, pod)
}

/// A workload stands in as one representative pod: its template's labels and ports.
pub fn workload(
    source: PodSource,
    metadata: &meta::ObjectMeta,
    template: Option<&core::PodTemplateSpec>,
    template_path: &str,
) -> Result<Pod, InvalidObject> {
    let object = object_ref(source.as_str(), metadata, true);
    let mut errs = Errors::default();
    check_metadata(metadata, true, validate::dns1123_subdomain, &mut errs);
    let labels: Labels = match template {
        None => {
            errs.add(template_path, "Required value");
            Labels::new()
        }
        Some(t) => {
            let labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            check_labels(&labels, &format!("{template_path}.metadata.labels"), &mut errs);
            labels
        }
    };
    let default_spec = core::PodSpec::default();
    let spec = template.and_then(|t| t.spec.as_ref()).unwrap_or(&default_spec);
    let ports = container_ports(spec, &format!("{template_path}.spec"), &mut errs);
    let pod = Pod {
        key: Key::new(namespace_of(metadata), metadata.name.clone().unwrap_or_default()),
        labels,
        ips: Vec::new(),
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node: None,
        phase: PodPhase::Running,
        source,
    };
    errs.finish(object, pod)
}
