//! Kubernetes objects (`k8s-openapi` types) to the validated model, applying the API
//! server's validation (docs/SEMANTICS.md, "Validation") and defaults. Used for files on disk and, by
//! the agent, for objects from the API, so both paths share one set of rules.
//!
//! Each rule follows upstream (kubernetes/kubernetes), with its field path, error type and
//! wording, in upstream's order, every error reported (none stops the others):
//! - `pkg/apis/networking/validation/validation.go`: `ValidateNetworkPolicy{Spec,Port,Peer}`,
//!   `ValidateIPBlock`; defaults from `pkg/apis/networking/v1/defaults.go` (protocol TCP;
//!   policyTypes absent or empty: Ingress, plus Egress when `spec.egress` has a rule);
//! - `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go`:
//!   `ValidateLabelSelector`, `ValidateLabelSelectorRequirement`, `ValidateLabels`;
//! - `staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go`: `ValidateObjectMeta`
//!   (name, generateName, namespace, labels, annotations);
//! - `pkg/apis/core/validation/validation.go`: `validateContainerPorts`, `validatePodIPs`
//!   (status), `ValidatePodTemplateSpec`; `pkg/apis/apps/validation/validation.go`:
//!   selector required, non-empty and matching the template's labels; the CronJob name limit
//!   of `pkg/apis/batch/validation/validation.go`.
//!
//! What is checked is what the model reads (names, labels, selectors, ports, IPs, CIDRs):
//! the rest of a pod spec (images, volumes, restartPolicy...) is not validated here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{FieldError, InvalidObject, ObjectRef};
use crate::labels::{LabelSelector, Labels, NAMESPACE_NAME_LABEL, Operator, Requirement};
use crate::options::Options;
use crate::types::*;
use crate::validate;

/// `TotalAnnotationSizeLimitB` of objectmeta.go.
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// A CronJob's jobs are named `<cronjob>-<11 characters>` and must fit a DNS-1035 label.
const CRONJOB_NAME_MAX: usize = 63 - 11;

/// A bad value as `field.Error.ErrorBody` prints it: strings quoted (`%q`), numbers bare,
/// anything else already rendered as Go would (`%#v`).
#[derive(Debug)]
enum Bad<'a> {
    Str(&'a str),
    Int(i64),
    Raw(String),
}

impl Bad<'_> {
    fn render(&self) -> String {
        match self {
            Bad::Str(s) => go_quote(s),
            Bad::Int(n) => n.to_string(),
            Bad::Raw(s) => s.clone(),
        }
    }
}

/// Go's `strconv.Quote`, so that an error stays on one line whatever the value holds.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%#v` of a `map[string]string`.
fn go_map(map: &BTreeMap<String, String>) -> String {
    let entries: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}:{}", go_quote(k), go_quote(v)))
        .collect();
    format!("map[string]string{{{}}}", entries.join(", "))
}

/// Collects field errors as upstream's `field.ErrorList`, dropping exact repeats as
/// `ToAggregate` does. Each error is also marked as to whether the value can still be
/// interpreted (a label value too long still means something; an unknown operator does
/// not): a stored object (`stored_*`) fails only on the latter.
#[derive(Debug, Default)]
struct Errors {
    list: Vec<(FieldError, bool)>,
    opts: Options,
}

impl Errors {
    fn new(opts: &Options) -> Self {
        Errors {
            list: Vec::new(),
            opts: *opts,
        }
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// The errors pushed since `mark` mean the value cannot be interpreted.
    fn uninterpretable_since(&mut self, mark: usize) {
        for e in &mut self.list[mark..] {
            e.1 = true;
        }
    }

    fn push(&mut self, field: impl Into<String>, reason: String) {
        let e = FieldError {
            field: field.into(),
            reason,
        };
        if !self.list.iter().any(|(f, _)| *f == e) {
            self.list.push((e, false));
        }
    }

    fn with_detail(kind: &str, detail: &str) -> String {
        if detail.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}: {detail}")
        }
    }

    fn required(&mut self, field: impl Into<String>, detail: &str) {
        self.push(field, Self::with_detail("Required value", detail));
    }

    fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.push(field, Self::with_detail("Forbidden", detail));
    }

    fn too_long(&mut self, field: impl Into<String>, max: usize) {
        self.push(field, format!("Too long: must have at most {max} bytes"));
    }

    fn invalid(&mut self, field: impl Into<String>, bad: Bad<'_>, detail: &str) {
        let body = format!("Invalid value: {}", bad.render());
        self.push(field, Self::with_detail(&body, detail));
    }

    fn invalid_all(&mut self, field: &str, bad: Bad<'_>, details: Vec<String>) {
        for d in details {
            self.invalid(field, Bad::Raw(bad.render()), &d);
        }
    }

    fn not_supported(&mut self, field: impl Into<String>, bad: Bad<'_>, valid: &[&str]) {
        let quoted: Vec<String> = valid.iter().map(|v| go_quote(v)).collect();
        let body = format!("Unsupported value: {}", bad.render());
        self.push(
            field,
            Self::with_detail(&body, &format!("supported values: {}", quoted.join(", "))),
        );
    }

    fn duplicate(&mut self, field: impl Into<String>, bad: Bad<'_>) {
        self.push(field, format!("Duplicate value: {}", bad.render()));
    }

    fn finish<T>(self, object: ObjectRef, value: T) -> Result<T, InvalidObject> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(InvalidObject {
                object,
                errors: self.list.into_iter().map(|(e, _)| e).collect(),
            })
        }
    }

    /// The errors that keep a stored object from being interpreted.
    fn uninterpretable(&self) -> Vec<FieldError> {
        self.list
            .iter()
            .filter(|(_, fatal)| *fatal)
            .map(|(e, _)| e.clone())
            .collect()
    }
}

/// A stored object as interpreted, and the fields that could not be (empty when all
/// could): see [`stored_network_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreted<T> {
    pub object: T,
    pub problems: Vec<FieldError>,
}

/// The namespace an object lives in; objects on disk without one land in `default`, as
/// `kubectl apply` puts them.
fn namespace_of(meta: &meta::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn object_ref(kind: &str, meta: &meta::ObjectMeta, namespaced: bool) -> ObjectRef {
    let ns = namespaced.then(|| namespace_of(meta));
    ObjectRef::new(kind, ns.as_deref(), &name_of(meta))
}

/// What the API server's `SimpleNameGenerator` makes of a `generateName` (at most 58
/// bytes of it, then five random characters).
const GENERATED_SUFFIX: &str = "xxxxx";
const GENERATED_BASE_MAX: usize = 63 - 5;

/// The object's name; for an object with only `generateName`, the name the API server
/// would generate, with `xxxxx` standing for its five random characters.
pub fn name_of(meta: &meta::ObjectMeta) -> String {
    match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(base)) if !base.is_empty() => {
            let mut cut = base.len().min(GENERATED_BASE_MAX);
            while !base.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}{GENERATED_SUFFIX}", &base[..cut])
        }
        _ => String::new(),
    }
}

/// `maskTrailingDash`: a generateName may end in '-'.
fn mask_trailing_dash(name: &str) -> String {
    match name.strip_suffix('-') {
        Some(head) if name.len() > 1 => format!("{head}a"),
        _ => name.to_string(),
    }
}

/// `ValidateObjectMeta`: generateName, name, namespace, labels, annotations. The namespace of
/// a cluster-scoped object is cleared by the API server, not rejected, so it is ignored.
fn check_metadata(
    meta: &meta::ObjectMeta,
    namespaced: bool,
    name_rule: fn(&str) -> Vec<String>,
    errs: &mut Errors,
) {
    if let Some(generate) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        let reasons = name_rule(&mask_trailing_dash(generate));
        errs.invalid_all("metadata.generateName", Bad::Str(generate), reasons);
    }
    // The API server generates the name before validating it.
    let name = name_of(meta);
    if name.is_empty() {
        errs.required("metadata.name", "name or generateName is required");
    } else {
        errs.invalid_all("metadata.name", Bad::Str(&name), name_rule(&name));
    }
    if namespaced {
        let ns = namespace_of(meta);
        errs.invalid_all(
            "metadata.namespace",
            Bad::Str(&ns),
            validate::dns1123_label(&ns),
        );
    }
    if let Some(labels) = &meta.labels {
        check_labels(labels, "metadata.labels", errs);
    }
    if let Some(annotations) = &meta.annotations {
        check_annotations(annotations, "metadata.annotations", errs);
    }
}

/// `ValidateLabels`: both key and value errors are reported at the map's path.
fn check_labels(labels: &BTreeMap<String, String>, path: &str, errs: &mut Errors) {
    for (k, v) in labels {
        errs.invalid_all(path, Bad::Str(k), validate::qualified_name(k));
        errs.invalid_all(path, Bad::Str(v), validate::label_value(v));
    }
}

/// `ValidateAnnotations`: keys are qualified names in any case; 256 KiB in total.
fn check_annotations(annotations: &BTreeMap<String, String>, path: &str, errs: &mut Errors) {
    for k in annotations.keys() {
        errs.invalid_all(
            path,
            Bad::Str(k),
            validate::qualified_name(&k.to_lowercase()),
        );
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT);
    }
}

/// `ValidateLabelSelector`. The returned selector omits requirements with an unknown
/// operator (the object is rejected anyway).
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
                let mark = errs.len();
                errs.invalid(
                    format!("{p}.operator"),
                    Bad::Str(other),
                    "not a valid selector operator",
                );
                errs.uninterpretable_since(mark);
                None
            }
        };
        match operator {
            Some(Operator::In | Operator::NotIn) if values.is_empty() => errs.required(
                format!("{p}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            Some(Operator::Exists | Operator::DoesNotExist) if !values.is_empty() => errs
                .forbidden(
                    format!("{p}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ),
            _ => {}
        }
        errs.invalid_all(
            &format!("{p}.key"),
            Bad::Str(&expr.key),
            validate::qualified_name(&expr.key),
        );
        for (j, v) in values.iter().enumerate() {
            errs.invalid_all(
                &format!("{p}.values[{j}]"),
                Bad::Str(v),
                validate::label_value(v),
            );
        }
        if let Some(operator) = operator {
            match_expressions.push(Requirement {
                key: expr.key.clone(),
                operator,
                values: values.into_iter().collect(),
            });
        }
    }
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

/// A NetworkPolicyPort's protocol: absent is defaulted to TCP; present must be supported.
fn policy_protocol(value: Option<&str>, path: &str, errs: &mut Errors) -> Protocol {
    match value {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            let mark = errs.len();
            errs.not_supported(path, Bad::Str(other), &["TCP", "UDP", "SCTP"]);
            errs.uninterpretable_since(mark);
            Protocol::Tcp
        }
    }
}

/// `ValidateNetworkPolicyPort`.
fn policy_port(port: &net::NetworkPolicyPort, path: &str, errs: &mut Errors) -> PortMatch {
    let protocol = policy_protocol(port.protocol.as_deref(), &format!("{path}.protocol"), errs);
    let end_path = format!("{path}.endPort");
    let mark = errs.len();
    let spec = match (&port.port, port.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(end)) => {
            errs.invalid(
                end_path,
                Bad::Int(end.into()),
                "may not be specified when `port` is not specified",
            );
            PortSpec::Any
        }
        (Some(IntOrString::Int(n)), end) => {
            errs.invalid_all(
                &format!("{path}.port"),
                Bad::Int((*n).into()),
                validate::port_number(*n),
            );
            if let Some(end) = end {
                if end < *n {
                    errs.invalid(
                        &end_path,
                        Bad::Int(end.into()),
                        "must be greater than or equal to `port`",
                    );
                }
                errs.invalid_all(&end_path, Bad::Int(end.into()), validate::port_number(end));
            }
            let from = (*n).clamp(0, 65535) as u16;
            let to = end.map_or(from, |e| e.clamp(0, 65535) as u16);
            PortSpec::Range { from, to }
        }
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                errs.invalid(
                    &end_path,
                    Bad::Int(end.into()),
                    "may not be specified when `port` is non-numeric",
                );
            }
            // A named port that breaks the naming rules still names (no) container port.
            errs.uninterpretable_since(mark);
            errs.invalid_all(
                &format!("{path}.port"),
                Bad::Str(name),
                validate::port_name(name),
            );
            return PortMatch {
                protocol,
                port: PortSpec::Named(name.clone()),
            };
        }
    };
    errs.uninterpretable_since(mark);
    PortMatch {
        protocol,
        port: spec,
    }
}

/// `ValidateIPBlock`, CIDRs read as `IsValidCIDRForLegacyField` does: parsed by
/// `ParseCIDRSloppy` (host bits masked off), then, with `StrictIPCIDRValidation` (the
/// default since 1.36), non-canonical forms rejected ([`validate::strict_cidr_error`]).
/// A stored object keeps the sloppy reading, as the API server and other enforcers do.
fn ip_block(block: &net::IPBlock, path: &str, errs: &mut Errors) -> Option<IpBlock> {
    let cidr_path = format!("{path}.cidr");
    let strict = errs.opts.version.strict_ip_cidr();
    let mark = errs.len();
    if block.cidr.is_empty() {
        errs.required(cidr_path, "");
        errs.uninterpretable_since(mark);
        return None;
    }
    let Some(cidr) = validate::parse_cidr_sloppy(&block.cidr) else {
        errs.invalid(cidr_path, Bad::Str(&block.cidr), validate::CIDR_ERR);
        errs.uninterpretable_since(mark);
        return None;
    };
    if strict && let Some(reason) = validate::strict_cidr_error(&block.cidr) {
        errs.invalid(&cidr_path, Bad::Str(&block.cidr), reason);
    }
    let mut except = Vec::new();
    let mut whole = true;
    for (i, raw) in block.except.iter().flatten().enumerate() {
        let p = format!("{path}.except[{i}]");
        let mark = errs.len();
        let Some(e) = validate::parse_cidr_sloppy(raw) else {
            errs.invalid(p, Bad::Str(raw), validate::CIDR_ERR);
            errs.uninterpretable_since(mark);
            whole = false;
            continue;
        };
        if strict && let Some(reason) = validate::strict_cidr_error(raw) {
            errs.invalid(&p, Bad::Str(raw), reason);
        }
        if cidr.net.contains(&e.net.network()) && cidr.written_prefix_len < e.written_prefix_len {
            except.push(e.net);
        } else {
            // What such an except would subtract is not what its author meant.
            errs.invalid(p, Bad::Str(raw), "must be a strict subset of `cidr`");
            errs.uninterpretable_since(mark);
            whole = false;
        }
    }
    whole.then_some(IpBlock {
        cidr: cidr.net,
        except,
    })
}

/// `ValidateNetworkPolicyPeer`: every part is validated, then the combination.
fn peer(p: &net::NetworkPolicyPeer, path: &str, errs: &mut Errors) -> Option<Peer> {
    let pod_selector = p
        .pod_selector
        .as_ref()
        .map(|s| label_selector(s, &format!("{path}.podSelector"), errs));
    let namespace_selector = p
        .namespace_selector
        .as_ref()
        .map(|s| label_selector(s, &format!("{path}.namespaceSelector"), errs));
    let block = p
        .ip_block
        .as_ref()
        .map(|b| ip_block(b, &format!("{path}.ipBlock"), errs));
    let count = [
        pod_selector.is_some(),
        namespace_selector.is_some(),
        block.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    let mark = errs.len();
    let result = match (count, block) {
        (0, _) => {
            errs.required(path, "must specify a peer");
            None
        }
        (1, Some(block)) => block.map(Peer::IpBlock),
        (_, Some(_)) => {
            errs.forbidden(path, "may not specify both ipBlock and another peer");
            None
        }
        (_, None) => Some(Peer::Pods {
            namespace_selector,
            pod_selector,
        }),
    };
    errs.uninterpretable_since(mark);
    result
}

/// One rule: its ports first, then its peers, as upstream orders them.
fn rule(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    path: &str,
    peer_field: &str,
    errs: &mut Errors,
) -> Rule {
    let ports = ports
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| policy_port(p, &format!("{path}.ports[{i}]"), errs))
        .collect();
    let peers = peers
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| peer(p, &format!("{path}.{peer_field}[{i}]"), errs))
        .collect();
    Rule { peers, ports }
}

/// Validates a NetworkPolicy and applies its defaults (checklist §2).
pub fn network_policy(p: &net::NetworkPolicy) -> Result<NetworkPolicy, InvalidObject> {
    network_policy_with(p, &Options::default())
}

pub fn network_policy_with(
    p: &net::NetworkPolicy,
    opts: &Options,
) -> Result<NetworkPolicy, InvalidObject> {
    let object = object_ref("NetworkPolicy", &p.metadata, true);
    let mut errs = Errors::new(opts);
    let policy = network_policy_in(p, &mut errs);
    errs.finish(object, policy)
}

/// A NetworkPolicy the API server stored, read as it and other enforcers read it: no
/// validation rejects it (the rules of the version that stored it may have been looser,
/// e.g. `StrictIPCIDRValidation` off, or a selector value accepted on update). What still
/// cannot be interpreted makes it fail closed: bad rules become no rules (the pods it
/// selects are isolated in its policy types with none of its allows); a bad podSelector
/// or policyTypes isolates every pod of its namespace in both directions.
pub fn stored_network_policy(p: &net::NetworkPolicy) -> Interpreted<NetworkPolicy> {
    let mut errs = Errors::new(&Options::default());
    let mut policy = network_policy_in(p, &mut errs);
    let problems = errs.uninterpretable();
    if !problems.is_empty() {
        policy.ingress.clear();
        policy.egress.clear();
        let whole = problems.iter().any(|e| {
            e.field.starts_with("spec.podSelector") || e.field.starts_with("spec.policyTypes")
        });
        if whole {
            policy.pod_selector = LabelSelector::default();
            policy.isolates_ingress = true;
            policy.isolates_egress = true;
        }
    }
    Interpreted {
        object: policy,
        problems,
    }
}

fn network_policy_in(p: &net::NetworkPolicy, errs: &mut Errors) -> NetworkPolicy {
    check_metadata(&p.metadata, true, validate::dns1123_subdomain, errs);
    let default_spec = net::NetworkPolicySpec::default();
    let spec = p.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .map(|s| label_selector(s, "spec.podSelector", errs))
        .unwrap_or_default();
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                r.from.as_ref(),
                r.ports.as_ref(),
                &format!("spec.ingress[{i}]"),
                "from",
                errs,
            )
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                r.to.as_ref(),
                r.ports.as_ref(),
                &format!("spec.egress[{i}]"),
                "to",
                errs,
            )
        })
        .collect();
    let types = spec.policy_types.as_deref().unwrap_or_default();
    let mark = errs.len();
    if types.len() > 2 {
        let list: Vec<String> = types.iter().map(|t| go_quote(t)).collect();
        errs.invalid(
            "spec.policyTypes",
            Bad::Raw(format!("[]networking.PolicyType{{{}}}", list.join(", "))),
            "may not specify more than two policyTypes",
        );
    } else {
        for (i, t) in types.iter().enumerate() {
            if t != "Ingress" && t != "Egress" {
                errs.not_supported(
                    format!("spec.policyTypes[{i}]"),
                    Bad::Str(t),
                    &["Ingress", "Egress"],
                );
            }
        }
    }
    errs.uninterpretable_since(mark);
    // SetDefaults_NetworkPolicy: absent or empty policyTypes.
    let (isolates_ingress, isolates_egress) = if types.is_empty() {
        (true, !egress.is_empty())
    } else {
        (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        )
    };
    NetworkPolicy {
        key: Key::new(namespace_of(&p.metadata), name_of(&p.metadata)),
        pod_selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
        audit: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::types::AUDIT_MODE_ANNOTATION))
            .is_some_and(|mode| mode == "audit"),
    }
}

pub fn namespace(ns: &core::Namespace) -> Result<Namespace, InvalidObject> {
    namespace_with(ns, &Options::default())
}

pub fn namespace_with(ns: &core::Namespace, opts: &Options) -> Result<Namespace, InvalidObject> {
    let object = object_ref("Namespace", &ns.metadata, false);
    let mut errs = Errors::new(opts);
    // The API server sets `kubernetes.io/metadata.name: <name>` before validating, so a
    // name too long for a label value is reported at the labels too.
    let mut meta = ns.metadata.clone();
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(NAMESPACE_NAME_LABEL.to_string(), name_of(&ns.metadata));
    check_metadata(&meta, false, validate::dns1123_label, &mut errs);
    errs.finish(object, namespace_model(ns))
}

/// A stored Namespace: its name and labels, whatever rules stored them.
pub fn stored_namespace(ns: &core::Namespace) -> Interpreted<Namespace> {
    Interpreted {
        object: namespace_model(ns),
        problems: Vec::new(),
    }
}

fn namespace_model(ns: &core::Namespace) -> Namespace {
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    Namespace::new(name_of(&ns.metadata), labels)
}

/// `validateContainerPorts` for one container; the protocol is defaulted to TCP first.
fn check_container_ports(
    ports: &[core::ContainerPort],
    path: &str,
    errs: &mut Errors,
) -> Vec<ContainerPort> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (j, p) in ports.iter().enumerate() {
        let pp = format!("{path}[{j}]");
        let name = p.name.as_deref().filter(|n| !n.is_empty());
        if let Some(name) = name {
            let reasons = validate::port_name(name);
            if !reasons.is_empty() {
                errs.invalid_all(&format!("{pp}.name"), Bad::Str(name), reasons);
            } else if !names.insert(name) {
                errs.duplicate(format!("{pp}.name"), Bad::Str(name));
            }
        }
        if p.container_port == 0 {
            errs.required(format!("{pp}.containerPort"), "");
        } else {
            errs.invalid_all(
                &format!("{pp}.containerPort"),
                Bad::Int(p.container_port.into()),
                validate::port_number(p.container_port),
            );
        }
        if let Some(host) = p.host_port.filter(|h| *h != 0) {
            errs.invalid_all(
                &format!("{pp}.hostPort"),
                Bad::Int(host.into()),
                validate::port_number(host),
            );
        }
        let protocol = match p.protocol.as_deref() {
            None | Some("") | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                errs.not_supported(
                    format!("{pp}.protocol"),
                    Bad::Str(other),
                    &["SCTP", "TCP", "UDP"],
                );
                Protocol::Tcp
            }
        };
        out.push(ContainerPort {
            name: name.map(str::to_string),
            port: p.container_port.clamp(0, 65535) as u16,
            protocol,
        });
    }
    out
}

/// The ports of a pod spec: every container's are validated; those of containers and of
/// restartable init containers (sidecars, which keep serving) are kept.
fn container_ports(spec: &core::PodSpec, path: &str, errs: &mut Errors) -> Vec<ContainerPort> {
    let mut ports = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let p = format!("{path}.containers[{i}].ports");
        ports.extend(check_container_ports(
            c.ports.as_deref().unwrap_or_default(),
            &p,
            errs,
        ));
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let p = format!("{path}.initContainers[{i}].ports");
        let checked = check_container_ports(c.ports.as_deref().unwrap_or_default(), &p, errs);
        if c.restart_policy.as_deref() == Some("Always") {
            ports.extend(checked);
        }
    }
    ports
}

/// The pod's IPs as the API server holds them, validated as `validatePodIPs` does on a
/// status update. When `podIP` and `podIPs[0]` differ, `podIP` wins (the v1 conversion).
fn pod_ips(status: Option<&core::PodStatus>, errs: &mut Errors) -> Vec<std::net::IpAddr> {
    let Some(status) = status else {
        return Vec::new();
    };
    let mut raw: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty())
        && raw.first() != Some(&ip)
    {
        raw = vec![ip];
    }
    let path = "status.podIPs";
    let mut ips = Vec::new();
    let mut all_valid = true;
    let strict = errs.opts.version.strict_ip_cidr();
    for (i, ip) in raw.iter().enumerate() {
        match validate::parse_ip(ip) {
            Ok(a) => {
                ips.push(a);
                if strict {
                    for reason in validate::strict_ip_errors(ip) {
                        errs.invalid(format!("{path}[{i}]"), Bad::Str(ip), reason);
                    }
                }
            }
            Err(e) => {
                all_valid = false;
                let mark = errs.len();
                errs.invalid(format!("{path}[{i}]"), Bad::Str(ip), &e);
                errs.uninterpretable_since(mark);
            }
        }
    }
    if raw.len() > 1 {
        let v4 = ips.iter().any(|ip| ip.is_ipv4());
        let v6 = ips.iter().any(|ip| ip.is_ipv6());
        if !(all_valid && v4 && v6) || raw.len() > 2 {
            let list: Vec<String> = raw
                .iter()
                .map(|ip| format!("core.PodIP{{IP:{}}}", go_quote(ip)))
                .collect();
            errs.invalid(
                path,
                Bad::Raw(format!("[]core.PodIP{{{}}}", list.join(", "))),
                "may specify no more than one IP for each IP family",
            );
        }
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
    pod_with(p, &Options::default())
}

pub fn pod_with(p: &core::Pod, opts: &Options) -> Result<Pod, InvalidObject> {
    let object = object_ref("Pod", &p.metadata, true);
    let mut errs = Errors::new(opts);
    let pod = pod_in(p, &mut errs);
    errs.finish(object, pod)
}

/// A stored Pod. An address that cannot be parsed is left out and reported: the pod is
/// then matched by no ipBlock through it, and it is not a local endpoint by it.
pub fn stored_pod(p: &core::Pod) -> Interpreted<Pod> {
    let mut errs = Errors::new(&Options::default());
    let object = pod_in(p, &mut errs);
    Interpreted {
        object,
        problems: errs.uninterpretable(),
    }
}

fn pod_in(p: &core::Pod, errs: &mut Errors) -> Pod {
    check_metadata(&p.metadata, true, validate::dns1123_subdomain, errs);
    let default_spec = core::PodSpec::default();
    let spec = p.spec.as_ref().unwrap_or(&default_spec);
    let ports = container_ports(spec, "spec", errs);
    let ips = pod_ips(p.status.as_ref(), errs);
    Pod {
        key: Key::new(namespace_of(&p.metadata), name_of(&p.metadata)),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node: spec.node_name.clone().filter(|n| !n.is_empty()),
        phase: phase(p.status.as_ref()),
        source: PodSource::Pod,
    }
}

/// The template part of `ValidatePodTemplateSpec` the model reads: labels (reported at
/// `<template>.labels`, as upstream does), annotations, container ports.
fn template_pod(
    source: PodSource,
    metadata: &meta::ObjectMeta,
    template: &core::PodTemplateSpec,
    template_path: &str,
    errs: &mut Errors,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let labels = tmeta.labels.unwrap_or_default();
    check_labels(&labels, &format!("{template_path}.labels"), errs);
    if let Some(annotations) = &tmeta.annotations {
        check_annotations(annotations, &format!("{template_path}.annotations"), errs);
    }
    let default_spec = core::PodSpec::default();
    let spec = template.spec.as_ref().unwrap_or(&default_spec);
    let ports = container_ports(spec, &format!("{template_path}.spec"), errs);
    Pod {
        key: Key::new(namespace_of(metadata), name_of(metadata)),
        labels,
        ips: Vec::new(),
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node: None,
        phase: PodPhase::Running,
        source,
    }
}

/// A workload stands in as one representative pod: its template's labels and ports.
///
/// Validates the metadata and the template only; the typed functions ([`deployment`],
/// [`stateful_set`], ...) also check the workload's selector against the template.
pub fn workload_with(
    opts: &Options,
    source: PodSource,
    metadata: &meta::ObjectMeta,
    template: Option<&core::PodTemplateSpec>,
    template_path: &str,
) -> Result<Pod, InvalidObject> {
    let object = object_ref(source.as_str(), metadata, true);
    let mut errs = Errors::new(opts);
    check_metadata(metadata, true, validate::dns1123_subdomain, &mut errs);
    if template.is_none() {
        errs.required(template_path, "");
    }
    let default_template = core::PodTemplateSpec::default();
    let template = template.unwrap_or(&default_template);
    let pod = template_pod(source, metadata, template, template_path, &mut errs);
    errs.finish(object, pod)
}

/// The apps/v1 rule (Deployment, ReplicaSet, StatefulSet, DaemonSet): a valid, non-empty
/// `spec.selector` that matches the template's labels. k8s-openapi reads an absent selector
/// as the empty one, so both are reported as empty.
fn apps_selector(
    selector: &meta::LabelSelector,
    template_labels: &Labels,
    kind: &str,
    errs: &mut Errors,
) {
    let before = errs.len();
    let parsed = label_selector(selector, "spec.selector", errs);
    if errs.len() > before {
        // `LabelSelectorAsSelector` fails on what `ValidateLabelSelector` rejected.
        errs.invalid(
            "spec.selector",
            Bad::Raw(format!("{parsed}")),
            "invalid label selector",
        );
    } else if parsed.is_everything() {
        errs.invalid(
            "spec.selector",
            Bad::Raw(format!("{parsed}")),
            &format!("empty selector is invalid for {}", kind.to_lowercase()),
        );
    } else if !parsed.matches(template_labels) {
        errs.invalid(
            "spec.template.metadata.labels",
            Bad::Raw(go_map(template_labels)),
            "`selector` does not match template `labels`",
        );
    }
}

fn apps_workload(
    opts: &Options,
    source: PodSource,
    metadata: &meta::ObjectMeta,
    selector: &meta::LabelSelector,
    template: &core::PodTemplateSpec,
) -> Result<Pod, InvalidObject> {
    let object = object_ref(source.as_str(), metadata, true);
    let mut errs = Errors::new(opts);
    check_metadata(metadata, true, validate::dns1123_subdomain, &mut errs);
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    apps_selector(selector, &labels, source.as_str(), &mut errs);
    let pod = template_pod(source, metadata, template, "spec.template", &mut errs);
    errs.finish(object, pod)
}

pub fn deployment(d: &apps::Deployment) -> Result<Pod, InvalidObject> {
    deployment_with(d, &Options::default())
}

pub fn deployment_with(d: &apps::Deployment, opts: &Options) -> Result<Pod, InvalidObject> {
    apps_workload(
        opts,
        PodSource::Deployment,
        &d.metadata,
        &d.spec.selector,
        &d.spec.template,
    )
}

pub fn stateful_set(s: &apps::StatefulSet) -> Result<Pod, InvalidObject> {
    stateful_set_with(s, &Options::default())
}

pub fn stateful_set_with(s: &apps::StatefulSet, opts: &Options) -> Result<Pod, InvalidObject> {
    apps_workload(
        opts,
        PodSource::StatefulSet,
        &s.metadata,
        &s.spec.selector,
        &s.spec.template,
    )
}

pub fn daemon_set(d: &apps::DaemonSet) -> Result<Pod, InvalidObject> {
    daemon_set_with(d, &Options::default())
}

pub fn daemon_set_with(d: &apps::DaemonSet, opts: &Options) -> Result<Pod, InvalidObject> {
    apps_workload(
        opts,
        PodSource::DaemonSet,
        &d.metadata,
        &d.spec.selector,
        &d.spec.template,
    )
}

pub fn replica_set(r: &apps::ReplicaSet) -> Result<Pod, InvalidObject> {
    replica_set_with(r, &Options::default())
}

pub fn replica_set_with(r: &apps::ReplicaSet, opts: &Options) -> Result<Pod, InvalidObject> {
    let template = r.spec.template.clone().unwrap_or_default();
    apps_workload(
        opts,
        PodSource::ReplicaSet,
        &r.metadata,
        &r.spec.selector,
        &template,
    )
}

/// The selector defaults to the template's labels, must then be non-empty, and must match
/// them (`ValidateReplicationControllerSpec`, `ValidatePodTemplateSpecForRC`).
pub fn replication_controller(rc: &core::ReplicationController) -> Result<Pod, InvalidObject> {
    replication_controller_with(rc, &Options::default())
}

pub fn replication_controller_with(
    rc: &core::ReplicationController,
    opts: &Options,
) -> Result<Pod, InvalidObject> {
    let object = object_ref("ReplicationController", &rc.metadata, true);
    let mut errs = Errors::new(opts);
    check_metadata(&rc.metadata, true, validate::dns1123_subdomain, &mut errs);
    let spec = rc.spec.clone().unwrap_or_default();
    let default_template = core::PodTemplateSpec::default();
    let template = spec.template.as_ref().unwrap_or(&default_template);
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec
        .selector
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| labels.clone());
    if selector.is_empty() {
        errs.required("spec.selector", "");
    }
    check_labels(&selector, "spec.selector", &mut errs);
    if spec.template.is_none() {
        errs.required("spec.template", "");
    } else if !selector.is_empty() && !LabelSelector::from_labels(selector).matches(&labels) {
        errs.invalid(
            "spec.template.metadata.labels",
            Bad::Raw(go_map(&labels)),
            "`selector` does not match template `labels`",
        );
    }
    let pod = template_pod(
        PodSource::ReplicationController,
        &rc.metadata,
        template,
        "spec.template",
        &mut errs,
    );
    errs.finish(object, pod)
}

/// A Job's selector is generated by the API server (unless `manualSelector`), so only the
/// template is checked.
pub fn job(j: &batch::Job) -> Result<Pod, InvalidObject> {
    job_with(j, &Options::default())
}

pub fn job_with(j: &batch::Job, opts: &Options) -> Result<Pod, InvalidObject> {
    let spec = j.spec.clone().unwrap_or_default();
    workload_with(
        opts,
        PodSource::Job,
        &j.metadata,
        Some(&spec.template),
        "spec.template",
    )
}

/// As a Job, plus the name limit: the CronJob's jobs are named `<name>-<11 characters>`.
pub fn cron_job(c: &batch::CronJob) -> Result<Pod, InvalidObject> {
    cron_job_with(c, &Options::default())
}

pub fn cron_job_with(c: &batch::CronJob, opts: &Options) -> Result<Pod, InvalidObject> {
    let object = object_ref("CronJob", &c.metadata, true);
    let mut errs = Errors::new(opts);
    check_metadata(&c.metadata, true, validate::dns1123_subdomain, &mut errs);
    if let Some(name) = c.metadata.name.as_deref()
        && name.len() > CRONJOB_NAME_MAX
    {
        errs.invalid(
            "metadata.name",
            Bad::Str(name),
            &format!("must be no more than {CRONJOB_NAME_MAX} characters"),
        );
    }
    let template = c
        .spec
        .job_template
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let pod = template_pod(
        PodSource::CronJob,
        &c.metadata,
        &template,
        "spec.jobTemplate.spec.template",
        &mut errs,
    );
    errs.finish(object, pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quote_keeps_one_line() {
        assert_eq!(go_quote("a\nb\"c\\"), r#""a\nb\"c\\""#);
        assert_eq!(go_quote("\u{1}é"), "\"\\x01é\"");
    }

    #[test]
    fn generate_name_may_end_in_a_dash() {
        assert_eq!(mask_trailing_dash("web-"), "weba");
        assert_eq!(mask_trailing_dash("-"), "-");
    }
}
