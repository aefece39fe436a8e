//! The validation tables, shared by the model's tests (`tests/validation.rs`) and the test
//! that sends every row to a real kube-apiserver (`palisade-kubetest`,
//! `tests/validation_apiserver.rs`): one row per rule, each invalid row with the exact field
//! path of every error, in upstream's order, and a fragment of each reason; each valid row
//! with a check of what the model made of it. A row holds for one Kubernetes version: the
//! newest unless it says otherwise.
#![allow(dead_code)]

use palisade_model::{IpBlock, KubeVersion, NetworkPolicy, Object, Peer, PortSpec, Protocol};

/// Kubernetes 1.35: `StrictIPCIDRValidation` off by default.
pub const V1_35: KubeVersion = KubeVersion { minor: 35 };
pub const NEWEST: KubeVersion = KubeVersion::NEWEST;

/// A NetworkPolicy `p` in namespace `ns` with this spec (YAML flow style).
pub fn policy(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: \
         ns}}\nspec: {spec}\n"
    )
}

/// A NetworkPolicy with this metadata and an empty spec.
pub fn policy_meta(metadata: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {metadata}\nspec: \
         {{podSelector: {{}}}}\n"
    )
}

/// A Pod `web` in namespace `ns` with one container of these ports, and this status.
pub fn pod(ports: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: ns}}\nspec: {{containers: \
         [{{name: c, image: i, ports: {ports}}}]}}\nstatus: {status}\n"
    )
}

pub fn namespace(metadata: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {metadata}\n")
}

pub fn deployment(selector: &str, labels: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: ns}}\nspec: \
         {{selector: {selector}, template: {{metadata: {{labels: {labels}}}, spec: {{containers: \
         [{{name: c, image: i}}]}}}}}}\n"
    )
}

pub struct Row {
    pub name: &'static str,
    pub yaml: String,
    /// Every error, in order: exact field path, fragment of the reason.
    pub errors: Vec<(&'static str, &'static str)>,
    pub version: KubeVersion,
}

pub fn row(name: &'static str, yaml: String, errors: &[(&'static str, &'static str)]) -> Row {
    row_at(NEWEST, name, yaml, errors)
}

pub fn row_at(
    version: KubeVersion,
    name: &'static str,
    yaml: String,
    errors: &[(&'static str, &'static str)],
) -> Row {
    Row {
        name,
        yaml,
        errors: errors.to_vec(),
        version,
    }
}

/// An object the API server accepts, and a check of what the model made of it.
pub struct ValidRow {
    pub name: &'static str,
    pub yaml: String,
    pub check: fn(&Object) -> bool,
    pub version: KubeVersion,
}

pub fn valid(name: &'static str, yaml: String, check: fn(&Object) -> bool) -> ValidRow {
    valid_at(NEWEST, name, yaml, check)
}

pub fn valid_at(
    version: KubeVersion,
    name: &'static str,
    yaml: String,
    check: fn(&Object) -> bool,
) -> ValidRow {
    ValidRow {
        name,
        yaml,
        check,
        version,
    }
}

pub fn invalid_rows() -> Vec<Row> {
    let long_name = format!("{{name: {}, namespace: ns}}", "a".repeat(254));
    let long_value = format!(
        "{{podSelector: {{matchLabels: {{app: {}}}}}}}",
        "v".repeat(64)
    );
    let long_cronjob = format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {}, namespace: ns}}\nspec: \
         {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {{spec: {{containers: []}}}}}}}}}}\n",
        "c".repeat(53)
    );
    vec![
        // --- Validation checklist: metadata (ValidateObjectMeta) ---
        row("metadata: policy name missing", policy_meta("{namespace: ns}"), &[(
            "metadata.name",
            "Required value: name or generateName is required",
        )]),
        row("metadata: policy name empty", policy_meta("{name: '', namespace: ns}"), &[(
            "metadata.name",
            "Required value: name or generateName is required",
        )]),
        row("metadata: policy name not a DNS subdomain (uppercase)", policy_meta("{name: Web, namespace: ns}"), &[(
            "metadata.name",
            "Invalid value: \"Web\": a lowercase RFC 1123 subdomain must consist of",
        )]),
        row("metadata: policy name not a DNS subdomain (empty label)", policy_meta("{name: 'a..b', namespace: ns}"), &[(
            "metadata.name",
            "Invalid value: \"a..b\": a lowercase RFC 1123 subdomain",
        )]),
        row("metadata: policy name longer than 253", policy_meta(&long_name), &[(
            "metadata.name",
            "must be no more than 253 characters",
        )]),
        row("metadata: generateName invalid", policy_meta("{name: p, generateName: 'Web-', namespace: ns}"), &[(
            "metadata.generateName",
            "Invalid value: \"Web-\": a lowercase RFC 1123 subdomain",
        )]),
        row("metadata: metadata.namespace not a DNS label", policy_meta("{name: p, namespace: Bad_NS}"), &[(
            "metadata.namespace",
            "Invalid value: \"Bad_NS\": a lowercase RFC 1123 label must consist of",
        )]),
        row("metadata: metadata.namespace with dots", policy_meta("{name: p, namespace: a.b}"), &[(
            "metadata.namespace",
            "Invalid value: \"a.b\": must not contain dots",
        )]),
        row("metadata: namespace name missing", namespace("{labels: {a: b}}"), &[(
            "metadata.name",
            "Required value: name or generateName is required",
        )]),
        row("metadata: namespace name is a DNS label, not a subdomain", namespace("{name: team.a}"), &[(
            "metadata.name",
            "Invalid value: \"team.a\": must not contain dots",
        )]),
        row("metadata: namespace name uppercase", namespace("{name: Team}"), &[(
            "metadata.name",
            "Invalid value: \"Team\": a lowercase RFC 1123 label must consist of",
        )]),
        // The API server labels a namespace with its name first: too long for a label value.
        row("metadata: namespace name longer than 63", namespace(&format!("{{name: {}}}", "n".repeat(64))), &[
            ("metadata.name", "must be no more than 63 characters"),
            ("metadata.labels", "must be no more than 63 bytes"),
        ]),
        row("metadata: label key invalid name part", policy_meta("{name: p, namespace: ns, labels: {'-x': a}}"), &[(
            "metadata.labels",
            "Invalid value: \"-x\": name part must consist of alphanumeric characters",
        )]),
        row("metadata: label key invalid prefix", policy_meta("{name: p, namespace: ns, labels: {'Example.com/x': a}}"), &[(
            "metadata.labels",
            "Invalid value: \"Example.com/x\": prefix part a lowercase RFC 1123 subdomain",
        )]),
        row("metadata: label key empty prefix", policy_meta("{name: p, namespace: ns, labels: {'/x': a}}"), &[(
            "metadata.labels",
            "Invalid value: \"/x\": prefix part must be non-empty",
        )]),
        row("metadata: label key with two slashes", policy_meta("{name: p, namespace: ns, labels: {'a/b/c': a}}"), &[(
            "metadata.labels",
            "Invalid value: \"a/b/c\": a valid label key must consist of",
        )]),
        row("metadata: label key name longer than 63", policy_meta(&format!("{{name: p, namespace: ns, labels: {{{}: a}}}}", "k".repeat(64))), &[(
            "metadata.labels",
            "name part must be no more than 63 bytes",
        )]),
        row("metadata: label value invalid", policy_meta("{name: p, namespace: ns, labels: {app: 'a b'}}"), &[(
            "metadata.labels",
            "Invalid value: \"a b\": a valid label must be an empty string or consist of",
        )]),
        row("metadata: namespace label value invalid", namespace("{name: team, labels: {tier: '-front'}}"), &[(
            "metadata.labels",
            "Invalid value: \"-front\": a valid label must be",
        )]),
        row("metadata: annotation key invalid", policy_meta("{name: p, namespace: ns, annotations: {'a b': x}}"), &[(
            "metadata.annotations",
            "Invalid value: \"a b\": name part must consist of",
        )]),
        // --- §7 label selectors ---
        row("§7 matchLabels key invalid", policy("{podSelector: {matchLabels: {'a b': x}}}"), &[(
            "spec.podSelector.matchLabels",
            "Invalid value: \"a b\": name part must consist of",
        )]),
        row("§7 matchLabels value invalid", policy("{podSelector: {matchLabels: {app: 'x y'}}}"), &[(
            "spec.podSelector.matchLabels",
            "Invalid value: \"x y\": a valid label must be",
        )]),
        row("§7 matchLabels value longer than 63", policy(&long_value), &[(
            "spec.podSelector.matchLabels",
            "must be no more than 63 bytes",
        )]),
        row("§7 In without values", policy("{podSelector: {matchExpressions: [{key: app, operator: In}]}}"), &[(
            "spec.podSelector.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
        )]),
        row("§7 NotIn with empty values", policy("{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}}"), &[(
            "spec.podSelector.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
        )]),
        row("§7 Exists with values", policy("{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}"), &[(
            "spec.podSelector.matchExpressions[0].values",
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        )]),
        row("§7 DoesNotExist with values", policy("{podSelector: {matchExpressions: [{key: a, operator: Exists}, {key: app, operator: DoesNotExist, values: [a]}]}}"), &[(
            "spec.podSelector.matchExpressions[1].values",
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        )]),
        row("§7 unknown operator", policy("{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}"), &[(
            "spec.podSelector.matchExpressions[0].operator",
            "Invalid value: \"Equals\": not a valid selector operator",
        )]),
        row("§7 operator is case-sensitive", policy("{podSelector: {matchExpressions: [{key: app, operator: in, values: [a]}]}}"), &[(
            "spec.podSelector.matchExpressions[0].operator",
            "Invalid value: \"in\": not a valid selector operator",
        )]),
        row("§7 matchExpressions key invalid", policy("{podSelector: {matchExpressions: [{key: '-app', operator: Exists}]}}"), &[(
            "spec.podSelector.matchExpressions[0].key",
            "Invalid value: \"-app\": name part must consist of",
        )]),
        row("§7 matchExpressions value invalid", policy("{podSelector: {matchExpressions: [{key: app, operator: In, values: [ok, 'not ok']}]}}"), &[(
            "spec.podSelector.matchExpressions[0].values[1]",
            "Invalid value: \"not ok\": a valid label must be",
        )]),
        row("§7 peer namespaceSelector In without values", policy("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}]}]}"), &[(
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            "Required value",
        )]),
        row("§7 peer podSelector label invalid", policy("{podSelector: {}, egress: [{to: [{podSelector: {matchLabels: {app: '%'}}}]}]}"), &[(
            "spec.egress[0].to[0].podSelector.matchLabels",
            "Invalid value: \"%\": a valid label must be",
        )]),
        // --- §8 ports ---
        row("§8 protocol unsupported", policy("{podSelector: {}, ingress: [{ports: [{protocol: ICMP, port: 80}]}]}"), &[(
            "spec.ingress[0].ports[0].protocol",
            "Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        )]),
        row("§8 protocol is case-sensitive", policy("{podSelector: {}, ingress: [{ports: [{protocol: tcp}]}]}"), &[(
            "spec.ingress[0].ports[0].protocol",
            "Unsupported value: \"tcp\"",
        )]),
        row("§8 port 0", policy("{podSelector: {}, ingress: [{ports: [{port: 0}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: 0: must be between 1 and 65535, inclusive",
        )]),
        row("§8 port 65536", policy("{podSelector: {}, ingress: [{ports: [{port: 65536}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: 65536: must be between 1 and 65535, inclusive",
        )]),
        row("§8 endPort < port", policy("{podSelector: {}, ingress: [{ports: [{port: 80}, {port: 80, endPort: 79}]}]}"), &[(
            "spec.ingress[0].ports[1].endPort",
            "Invalid value: 79: must be greater than or equal to `port`",
        )]),
        row("§8 endPort out of range", policy("{podSelector: {}, egress: [{ports: [{port: 80, endPort: 65536}]}]}"), &[(
            "spec.egress[0].ports[0].endPort",
            "Invalid value: 65536: must be between 1 and 65535, inclusive",
        )]),
        row("§8 endPort 0 is below port and out of range", policy("{podSelector: {}, egress: [{ports: [{port: 1, endPort: 0}]}]}"), &[
            ("spec.egress[0].ports[0].endPort", "Invalid value: 0: must be greater than or equal to `port`"),
            ("spec.egress[0].ports[0].endPort", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        ]),
        row("§8 endPort with a named port", policy("{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}"), &[(
            "spec.ingress[0].ports[0].endPort",
            "Invalid value: 90: may not be specified when `port` is non-numeric",
        )]),
        row("§8 endPort without port", policy("{podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}"), &[(
            "spec.ingress[0].ports[0].endPort",
            "Invalid value: 90: may not be specified when `port` is not specified",
        )]),
        row("§8 named port longer than 15", policy("{podSelector: {}, ingress: [{ports: [{port: abcdefghijklmnop}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: \"abcdefghijklmnop\": must be no more than 15 characters",
        )]),
        row("§8 named port uppercase", policy("{podSelector: {}, ingress: [{ports: [{port: Http}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: \"Http\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        )]),
        row("§8 named port all uppercase breaks two rules", policy("{podSelector: {}, ingress: [{ports: [{port: HTTP}]}]}"), &[
            ("spec.ingress[0].ports[0].port", "must contain only alpha-numeric characters"),
            ("spec.ingress[0].ports[0].port", "must contain at least one letter (a-z)"),
        ]),
        row("§8 named port without a letter", policy("{podSelector: {}, ingress: [{ports: [{port: '8080'}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: \"8080\": must contain at least one letter (a-z)",
        )]),
        row("§8 named port with a double hyphen", policy("{podSelector: {}, ingress: [{ports: [{port: web--1}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: \"web--1\": must not contain consecutive hyphens",
        )]),
        row("§8 named port with a leading hyphen", policy("{podSelector: {}, ingress: [{ports: [{port: '-web'}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "Invalid value: \"-web\": must not begin or end with a hyphen",
        )]),
        row("§8 named port with a trailing hyphen", policy("{podSelector: {}, egress: [{ports: [{port: web-}]}]}"), &[(
            "spec.egress[0].ports[0].port",
            "Invalid value: \"web-\": must not begin or end with a hyphen",
        )]),
        row("§8 named port with an underscore", policy("{podSelector: {}, ingress: [{ports: [{port: web_1}]}]}"), &[(
            "spec.ingress[0].ports[0].port",
            "must contain only alpha-numeric characters",
        )]),
        row("§8 named port empty", policy("{podSelector: {}, ingress: [{ports: [{port: ''}]}]}"), &[
            ("spec.ingress[0].ports[0].port", "Invalid value: \"\": must contain only alpha-numeric"),
            ("spec.ingress[0].ports[0].port", "must contain at least one letter (a-z)"),
        ]),
        // --- §6 peers ---
        row("§6 empty peer {}", policy("{podSelector: {}, ingress: [{from: [{}]}]}"), &[(
            "spec.ingress[0].from[0]",
            "Required value: must specify a peer",
        )]),
        row("§6 ipBlock with podSelector", policy("{podSelector: {}, ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}"), &[(
            "spec.ingress[0].from[1]",
            "Forbidden: may not specify both ipBlock and another peer",
        )]),
        row("§6 ipBlock with namespaceSelector", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]}"), &[(
            "spec.egress[0].to[0]",
            "Forbidden: may not specify both ipBlock and another peer",
        )]),
        row("§6 ipBlock with a selector: the parts are still validated", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: bad}, podSelector: {matchLabels: {a: '%'}}}]}]}"), &[
            ("spec.egress[0].to[0].podSelector.matchLabels", "Invalid value: \"%\""),
            ("spec.egress[0].to[0].ipBlock.cidr", "Invalid value: \"bad\": must be a valid CIDR value"),
            ("spec.egress[0].to[0]", "Forbidden: may not specify both ipBlock and another peer"),
        ]),
        // --- §6 ipBlock ---
        row("§6 ipBlock empty cidr", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: ''}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "Required value",
        )]),
        row("§6 ipBlock missing cidr", policy("{podSelector: {}, egress: [{to: [{ipBlock: {except: [10.0.0.0/8]}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "Required value",
        )]),
        row("§6 ipBlock cidr prefix too long", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )]),
        row("§6 ipBlock cidr without prefix", policy("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.1}}]}]}"), &[(
            "spec.ingress[0].from[0].ipBlock.cidr",
            "Invalid value: \"10.0.0.1\": must be a valid CIDR value",
        )]),
        row("§6 ipBlock cidr with a sign in the prefix", policy("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/+8}}]}]}"), &[(
            "spec.ingress[0].from[0].ipBlock.cidr",
            "must be a valid CIDR value",
        )]),
        row("§6 ipBlock except not inside cidr", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[0]",
            "Invalid value: \"11.0.0.0/16\": must be a strict subset of `cidr`",
        )]),
        row("§6 ipBlock except equal to cidr (not strict)", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/16, 10.0.0.0/8]}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[1]",
            "Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
        )]),
        row("§6 ipBlock except wider than cidr", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.0.0.0/8]}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[0]",
            "must be a strict subset of `cidr`",
        )]),
        row("§6 ipBlock except of the other family", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['2001:db8::/64']}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[0]",
            "Invalid value: \"2001:db8::/64\": must be a strict subset of `cidr`",
        )]),
        row("§6 ipBlock except not a CIDR", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0]}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[1]",
            "Invalid value: \"10.2.0.0\": must be a valid CIDR value",
        )]),
        row_at(V1_35, "§6 ipBlock written prefix lengths are compared, as upstream does", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: '::ffff:10.0.0.0/104', except: [10.1.0.0/16]}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[0]",
            "must be a strict subset of `cidr`",
        )]),
        // --- §2 policyTypes ---
        // --- §6 StrictIPCIDRValidation (default since 1.36) ---
        row("§6 strict: ipBlock cidr with host bits set", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.1.2.3/16}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "Invalid value: \"10.1.2.3/16\": must not have bits set beyond the prefix length",
        )]),
        row("§6 strict: except with host bits set", policy("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.3/24]}}]}]}"), &[(
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "must not have bits set beyond the prefix length",
        )]),
        row("§6 strict: IPv4 octets with leading zeros", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 010.0.0.0/8}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "must not have leading 0s in IP or prefix length",
        )]),
        row("§6 strict: prefix length with a leading zero", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/08}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "must not have leading 0s in IP or prefix length",
        )]),
        row("§6 strict: IPv4-mapped IPv6 except", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['::ffff:10.1.0.0/112']}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.except[0]",
            "must not have an IPv4-mapped IPv6 address",
        )]),
        row("§6 strict: IPv4-mapped cidr, and the except compared by written prefix", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: '::ffff:10.0.0.0/104', except: [10.1.0.0/16]}}]}]}"), &[
            ("spec.egress[0].to[0].ipBlock.cidr", "must not have an IPv4-mapped IPv6 address"),
            ("spec.egress[0].to[0].ipBlock.except[0]", "must be a strict subset of `cidr`"),
        ]),
        row("§6 strict: IPv6 with host bits set", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 'fd00::1/64'}}]}]}"), &[(
            "spec.egress[0].to[0].ipBlock.cidr",
            "must not have bits set beyond the prefix length",
        )]),
        // --- §2 policyTypes ---
        row("§2 policyTypes unknown value", policy("{podSelector: {}, policyTypes: [Ingress, Both]}"), &[(
            "spec.policyTypes[1]",
            "Unsupported value: \"Both\": supported values: \"Ingress\", \"Egress\"",
        )]),
        row("§2 policyTypes is case-sensitive", policy("{podSelector: {}, policyTypes: [egress]}"), &[(
            "spec.policyTypes[0]",
            "Unsupported value: \"egress\"",
        )]),
        row("§2 policyTypes with three entries", policy("{podSelector: {}, policyTypes: [Ingress, Egress, Ingress]}"), &[(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        )]),
        row("§2 policyTypes with three entries: entries are then not checked", policy("{podSelector: {}, policyTypes: [Ingress, Egress, Other]}"), &[(
            "spec.policyTypes",
            "Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Other\"}: may not specify more than two policyTypes",
        )]),
        // --- pods (validateContainerPorts, validatePodIPs) ---
        row("pod: containerPort 0", pod("[{containerPort: 0}]", "{}"), &[(
            "spec.containers[0].ports[0].containerPort",
            "Required value",
        )]),
        row("pod: containerPort missing", pod("[{name: http}]", "{}"), &[(
            "spec.containers[0].ports[0].containerPort",
            "Required value",
        )]),
        row("pod: containerPort 65536", pod("[{containerPort: 80}, {containerPort: 65536}]", "{}"), &[(
            "spec.containers[0].ports[1].containerPort",
            "Invalid value: 65536: must be between 1 and 65535, inclusive",
        )]),
        row("pod: containerPort negative", pod("[{containerPort: -1}]", "{}"), &[(
            "spec.containers[0].ports[0].containerPort",
            "Invalid value: -1: must be between 1 and 65535, inclusive",
        )]),
        row("pod: hostPort out of range", pod("[{containerPort: 80, hostPort: 70000}]", "{}"), &[(
            "spec.containers[0].ports[0].hostPort",
            "Invalid value: 70000",
        )]),
        row("pod: port name invalid", pod("[{name: Http-1, containerPort: 80}]", "{}"), &[(
            "spec.containers[0].ports[0].name",
            "Invalid value: \"Http-1\": must contain only alpha-numeric characters",
        )]),
        row("pod: port name too long", pod("[{name: abcdefghijklmnop, containerPort: 80}]", "{}"), &[(
            "spec.containers[0].ports[0].name",
            "must be no more than 15 characters",
        )]),
        row("pod: port name duplicated in a container", pod("[{name: http, containerPort: 80}, {name: http, containerPort: 81}]", "{}"), &[(
            "spec.containers[0].ports[1].name",
            "Duplicate value: \"http\"",
        )]),
        row("pod: port protocol unsupported", pod("[{containerPort: 80, protocol: ICMP}]", "{}"), &[(
            "spec.containers[0].ports[0].protocol",
            "Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        )]),
        row("pod: bad podIP", pod("[]", "{podIP: 10.0.0.300}"), &[(
            "status.podIPs[0]",
            "Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )]),
        row("pod: bad podIPs entry", pod("[]", "{podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::zz'}]}"), &[
            ("status.podIPs[1]", "Invalid value: \"fd00::zz\": must be a valid IP address"),
            ("status.podIPs", "may specify no more than one IP for each IP family"),
        ]),
        row("§9 strict: podIP with leading zeros", pod("[]", "{podIP: 010.0.0.1}"), &[(
            "status.podIPs[0]",
            "must not have leading 0s",
        )]),
        row("§9 strict: podIPs entry IPv4-mapped", pod("[]", "{podIPs: [{ip: '::ffff:10.0.0.1'}]}"), &[(
            "status.podIPs[0]",
            "must not be an IPv4-mapped IPv6 address",
        )]),
        row("pod: two IPs of one family", pod("[]", "{podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}"), &[(
            "status.podIPs",
            "may specify no more than one IP for each IP family",
        )]),
        // 1.37 has no separate duplicate check (the API server reports only this).
        row("pod: duplicate podIPs", pod("[]", "{podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.1}]}"), &[
            ("status.podIPs", "may specify no more than one IP for each IP family"),
        ]),
        row("pod: init container ports are validated", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: ns}\nspec: {initContainers: [{name: i, image: i, ports: [{containerPort: 0}]}], containers: [{name: c, image: i}]}\n".to_string(), &[(
            "spec.initContainers[0].ports[0].containerPort",
            "Required value",
        )]),
        row("pod: name not a DNS subdomain", "apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\n".to_string(), &[(
            "metadata.name",
            "Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain",
        )]),
        // --- workloads: selector and template ---
        row("workload: Deployment selector does not match the template labels", deployment("{matchLabels: {app: web}}", "{app: api}"), &[(
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        )]),
        row("workload: Deployment without selector", deployment("{}", "{app: web}"), &[(
            "spec.selector",
            "empty selector is invalid for deployment",
        )]),
        row("workload: Deployment selector invalid", deployment("{matchExpressions: [{key: app, operator: In}]}", "{app: web}"), &[
            ("spec.selector.matchExpressions[0].values", "Required value"),
            ("spec.selector", "invalid label selector"),
        ]),
        row("workload: template label invalid", deployment("{matchLabels: {app: web}}", "{app: web, 'x y': z}"), &[(
            "spec.template.labels",
            "Invalid value: \"x y\"",
        )]),
        row("workload: ReplicationController selector does not match", "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc, namespace: ns}\nspec: {selector: {app: web}, template: {metadata: {labels: {app: db}}}}\n".to_string(), &[(
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        )]),
        row("workload: CronJob name longer than 52", long_cronjob, &[(
            "metadata.name",
            "must be no more than 52 characters",
        )]),
        row("workload: CronJob template ports", "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: cj, namespace: ns}\nspec: {schedule: '* * * * *', jobTemplate: {spec: {template: {spec: {containers: [{name: c, image: i, ports: [{containerPort: 0}]}]}}}}}\n".to_string(), &[(
            "spec.jobTemplate.spec.template.spec.containers[0].ports[0].containerPort",
            "Required value",
        )]),
    ]
}

pub fn valid_rows() -> Vec<ValidRow> {
    fn np(o: &Object) -> &NetworkPolicy {
        match o {
            Object::NetworkPolicy(p) => p,
            other => panic!("not a policy: {other:?}"),
        }
    }
    fn ingress_ports(o: &Object) -> Vec<(Protocol, PortSpec)> {
        np(o).ingress[0]
            .ports
            .iter()
            .map(|p| (p.protocol, p.port.clone()))
            .collect()
    }
    fn block(o: &Object) -> IpBlock {
        match &np(o).egress[0].peers[0] {
            Peer::IpBlock(b) => b.clone(),
            other => panic!("not an ipBlock: {other:?}"),
        }
    }
    vec![
        valid("§5 ingress: [{}] allows everything", policy("{podSelector: {}, ingress: [{}]}"), |o| {
            np(o).ingress.len() == 1 && np(o).ingress[0].peers.is_empty() && np(o).ingress[0].ports.is_empty()
        }),
        valid("§4 empty from and ports lists", policy("{podSelector: {}, ingress: [{from: [], ports: []}]}"), |o| {
            np(o).ingress[0].peers.is_empty() && np(o).ingress[0].ports.is_empty()
        }),
        valid("§8 named ports, any protocol", policy("{podSelector: {}, ingress: [{ports: [{port: http}, {port: dns-53, protocol: UDP}, {port: sctp-x, protocol: SCTP}]}]}"), |o| {
            ingress_ports(o) == vec![
                (Protocol::Tcp, PortSpec::Named("http".into())),
                (Protocol::Udp, PortSpec::Named("dns-53".into())),
                (Protocol::Sctp, PortSpec::Named("sctp-x".into())),
            ]
        }),
        valid("§8 protocol defaults to TCP; a port alone", policy("{podSelector: {}, ingress: [{ports: [{port: 443}, {protocol: UDP}]}]}"), |o| {
            ingress_ports(o) == vec![(Protocol::Tcp, PortSpec::Range { from: 443, to: 443 }), (Protocol::Udp, PortSpec::Any)]
        }),
        valid("§8 endPort range", policy("{podSelector: {}, ingress: [{ports: [{port: 32000, endPort: 32768}]}]}"), |o| {
            ingress_ports(o) == vec![(Protocol::Tcp, PortSpec::Range { from: 32000, to: 32768 })]
        }),
        valid("§8 endPort equal to port", policy("{podSelector: {}, ingress: [{ports: [{port: 1, endPort: 1}, {port: 65535, endPort: 65535}]}]}"), |o| {
            ingress_ports(o)[1] == (Protocol::Tcp, PortSpec::Range { from: 65535, to: 65535 })
        }),
        valid("§6 both selectors in one peer", policy("{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}, namespaceSelector: {}}]}]}"), |o| {
            matches!(&np(o).ingress[0].peers[0], Peer::Pods { namespace_selector: Some(ns), pod_selector: Some(p) } if ns.is_everything() && !p.is_everything())
        }),
        valid("§6 separate peers", policy("{podSelector: {}, ingress: [{from: [{podSelector: {}}, {namespaceSelector: {}}, {ipBlock: {cidr: 0.0.0.0/0}}]}]}"), |o| {
            np(o).ingress[0].peers.len() == 3
        }),
        valid_at(V1_35, "§6 ipBlock with host bits set is accepted and masked (before 1.36)", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.1.2.3/16, except: [10.1.2.3/24]}}]}]}"), |o| {
            block(o).cidr.to_string() == "10.1.0.0/16" && block(o).except[0].to_string() == "10.1.2.0/24"
        }),
        valid_at(V1_35, "§6 ipBlock with leading zeros (ParseCIDRSloppy, before 1.36)", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 010.0.0.0/08}}]}]}"), |o| {
            block(o).cidr.to_string() == "10.0.0.0/8"
        }),
        valid("§6 ipBlock IPv6 with except", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 'fd00::/8', except: ['fd00:1::/32']}}]}]}"), |o| {
            block(o).cidr.to_string() == "fd00::/8"
        }),
        valid_at(V1_35, "§6 ipBlock IPv4-mapped IPv6 is IPv4 (before 1.36)", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['::ffff:10.1.0.0/112']}}]}]}"), |o| {
            block(o).except[0].to_string() == "10.1.0.0/16"
        }),
        valid("§2 empty policyTypes", policy("{podSelector: {}, policyTypes: []}"), |o| {
            np(o).isolates_ingress && !np(o).isolates_egress
        }),
        valid("§2 policyTypes repeated", policy("{podSelector: {}, policyTypes: [Egress, Egress]}"), |o| {
            !np(o).isolates_ingress && np(o).isolates_egress
        }),
        valid("§7 selector operators with and without values", policy("{podSelector: {matchExpressions: [{key: a, operator: In, values: [x]}, {key: b, operator: NotIn, values: [y]}, {key: c, operator: Exists}, {key: d, operator: DoesNotExist, values: []}]}}"), |o| {
            np(o).pod_selector.match_expressions.len() == 4
        }),
        valid("§7 prefixed keys and empty values", policy("{podSelector: {matchLabels: {'app.kubernetes.io/name': web, 'example.com/Empty_Ok': ''}}}"), |o| {
            np(o).pod_selector.match_labels.len() == 2
        }),
        valid("metadata: generateName alone: the API server generates the name", policy_meta("{generateName: web-, namespace: ns}"), |o| match o {
            Object::NetworkPolicy(p) => p.key.name == "web-xxxxx",
            _ => false,
        }),
        valid("§6 strict: canonical CIDRs of both families", policy("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}}]}]}"), |o| match o {
            Object::NetworkPolicy(p) => p.egress[0].peers.len() == 2,
            _ => false,
        }),
        valid("metadata: generateName with a trailing dash", policy_meta("{name: p, generateName: web-, namespace: ns}"), |_| true),
        valid("metadata: absent namespace is default", policy_meta("{name: p}"), |o| np(o).key.namespace == "default"),
        valid("metadata: annotation keys in any case", policy_meta("{name: p, namespace: ns, annotations: {'Example.com/Note': x}}"), |_| true),
        valid("§7 namespace carries its name label", namespace("{name: team, labels: {tier: front}}"), |o| match o {
            Object::Namespace(ns) => ns.labels.get("kubernetes.io/metadata.name").map(String::as_str) == Some("team"),
            _ => false,
        }),
        valid("§9 pod dual-stack", pod("[{name: http, containerPort: 8080}, {containerPort: 53, protocol: UDP}]", "{podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}"), |o| match o {
            Object::Pod(p) => p.ips.len() == 2 && p.resolve_named_port("http", Protocol::Tcp) == Some(8080),
            _ => false,
        }),
        valid("§9 podIP wins over a different podIPs[0]", pod("[]", "{podIP: 10.0.0.9, podIPs: [{ip: 10.0.0.1}]}"), |o| match o {
            Object::Pod(p) => p.ips.iter().map(ToString::to_string).collect::<Vec<_>>() == ["10.0.0.9"],
            _ => false,
        }),
        valid_at(V1_35, "§9 podIP with leading zeros (ParseIPSloppy, before 1.36)", pod("[]", "{podIP: 010.000.000.001}"), |o| match o {
            Object::Pod(p) => p.ips[0].to_string() == "10.0.0.1",
            _ => false,
        }),
        valid("§8 empty container port protocol defaults to TCP", pod("[{name: web, containerPort: 80, protocol: ''}]", "{}"), |o| match o {
            Object::Pod(p) => p.ports[0].protocol == Protocol::Tcp,
            _ => false,
        }),
        valid("workload: Deployment selector matching the template", deployment("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: DoesNotExist}]}", "{app: web, v: '1'}"), |o| match o {
            Object::Pod(p) => p.labels.len() == 2,
            _ => false,
        }),
        valid("workload: ReplicationController selector defaults to the template labels", "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec: {template: {metadata: {labels: {app: web}}}}\n".to_string(), |_| true),
        // Fields added in 1.35-1.37 are known fields, not unknown ones (strict field validation).
        valid("fields: pod fields added in 1.35 (status.allocatedResources, status.resources) and 1.37 (httpGet.protocol)", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: ns}\nspec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}], readinessProbe: {httpGet: {port: http, protocol: HTTP/1.1}}}]}\nstatus: {podIP: 10.0.0.1, allocatedResources: {cpu: 100m}, resources: {requests: {cpu: 100m}}}\n".to_string(), |o| match o {
            Object::Pod(p) => p.ips.iter().map(ToString::to_string).collect::<Vec<_>>() == ["10.0.0.1"],
            _ => false,
        }),
        valid("fields: Job fields added in 1.37 (spec.scheduling, grpc.mode)", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j, namespace: ns}\nspec: {scheduling: {}, template: {metadata: {labels: {app: j}}, spec: {containers: [{name: c, livenessProbe: {grpc: {port: 9000, mode: Plaintext}}}]}}}\n".to_string(), |o| match o {
            Object::Pod(p) => p.labels.get("app").map(String::as_str) == Some("j"),
            _ => false,
        }),
    ]
}
