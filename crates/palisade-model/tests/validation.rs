//! The API server's validation rules, one row per rule (docs/SEMANTICS.md "Validation" and
//! checklist §2, §6-§8): each invalid row names the exact field path of every error it must
//! produce, in upstream's order, and a fragment of each reason; each valid row must load.
//! Field paths and wording follow kubernetes/kubernetes:
//! pkg/apis/networking/validation/validation.go,
//! staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go,
//! staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go,
//! staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go,
//! pkg/apis/core/validation/validation.go.

#[path = "common/validation_rows.rs"]
mod rows;

use palisade_model::load::{LoadError, Loaded, load_str, load_str_with};
use palisade_model::{KubeVersion, Object, Options};
use rows::*;

fn load(yaml: &str) -> Loaded {
    load_at(KubeVersion::NEWEST, yaml)
}

fn load_at(version: KubeVersion, yaml: &str) -> Loaded {
    let mut loaded = Loaded::default();
    let opts = Options {
        version,
        ..Default::default()
    };
    load_str_with(yaml, "row.yaml", &opts, &mut loaded);
    loaded
}

/// The (field, reason) pairs of the single invalid object in `yaml`.
fn field_errors(name: &str, version: KubeVersion, yaml: &str) -> Vec<(String, String)> {
    let loaded = load_at(version, yaml);
    assert!(
        loaded.objects.is_empty(),
        "{name}: expected a rejection, loaded {:?}",
        loaded.objects
    );
    assert_eq!(loaded.errors.len(), 1, "{name}: {:?}", loaded.errors);
    let line = loaded.errors[0].to_string();
    assert!(
        !line.contains('\n'),
        "{name}: error is not one line: {line}"
    );
    match &loaded.errors[0] {
        LoadError::Invalid { invalid, .. } => invalid
            .errors
            .iter()
            .map(|e| (e.field.clone(), e.reason.clone()))
            .collect(),
        other => panic!("{name}: expected a validation error, got {other}"),
    }
}

#[test]
fn every_rule_rejects_with_the_exact_field_path() {
    let rows = invalid_rows();
    let mut failures = Vec::new();
    for r in &rows {
        let got = field_errors(r.name, r.version, &r.yaml);
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        let want: Vec<&str> = r.errors.iter().map(|(f, _)| *f).collect();
        if fields != want {
            failures.push(format!("{}: want fields {want:?}, got {got:?}", r.name));
            continue;
        }
        for ((_, reason), (_, fragment)) in got.iter().zip(&r.errors) {
            if !reason.contains(fragment) {
                failures.push(format!("{}: {reason:?} lacks {fragment:?}", r.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(rows.len() >= 80, "{} rows", rows.len());
}

#[test]
fn valid_objects_are_accepted() {
    for ValidRow {
        name,
        yaml,
        check,
        version,
    } in valid_rows()
    {
        let loaded = load_at(version, &yaml);
        assert!(
            loaded.errors.is_empty(),
            "{name}: {:?}",
            loaded
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
        assert_eq!(loaded.objects.len(), 1, "{name}");
        assert!(
            check(&loaded.objects[0].1),
            "{name}: {:?}",
            loaded.objects[0].1
        );
    }
}

#[test]
fn policy_types_defaulting() {
    // §2: absent (or empty): Ingress, plus Egress when spec.egress has at least one rule.
    let rows = [
        ("§2 absent, no egress", "{podSelector: {}}", (true, false)),
        (
            "§2 absent, egress: []",
            "{podSelector: {}, egress: []}",
            (true, false),
        ),
        (
            "§2 absent, egress: [{}]",
            "{podSelector: {}, egress: [{}]}",
            (true, true),
        ),
        (
            "§2 absent, ingress rules only",
            "{podSelector: {}, ingress: [{}]}",
            (true, false),
        ),
        (
            "§2 empty list, egress rule",
            "{podSelector: {}, policyTypes: [], egress: [{}]}",
            (true, true),
        ),
        (
            "§2 Egress only",
            "{podSelector: {}, policyTypes: [Egress]}",
            (false, true),
        ),
        (
            "§2 Ingress only, egress rules ignored",
            "{podSelector: {}, policyTypes: [Ingress], egress: [{}]}",
            (true, false),
        ),
        (
            "§2 both",
            "{podSelector: {}, policyTypes: [Egress, Ingress]}",
            (true, true),
        ),
        ("§2 no spec at all", "null", (true, false)),
    ];
    for (name, spec, (ingress, egress)) in rows {
        let loaded = load(&policy(spec));
        assert!(loaded.errors.is_empty(), "{name}: {:?}", loaded.errors);
        let Object::NetworkPolicy(p) = &loaded.objects[0].1 else {
            panic!("{name}")
        };
        assert_eq!(
            (p.isolates_ingress, p.isolates_egress),
            (ingress, egress),
            "{name}"
        );
    }
}

#[test]
fn one_object_reports_every_error_in_upstream_order() {
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad, \
                namespace: ns, labels: {'-k': v}}\nspec:\n  podSelector: {matchExpressions: \
                [{key: app, operator: In}]}\n  ingress:\n  - from: [{}]\n    ports: [{port: 0}, \
                {port: 80, endPort: 79}]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, \
                except: [11.0.0.0/8]}}]\n  policyTypes: [Sideways]\n";
    let got = field_errors("several errors", KubeVersion::NEWEST, yaml);
    let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "metadata.labels",
            "spec.podSelector.matchExpressions[0].values",
            // A rule's ports are validated before its peers.
            "spec.ingress[0].ports[0].port",
            "spec.ingress[0].ports[1].endPort",
            "spec.ingress[0].from[0]",
            "spec.egress[0].to[0].ipBlock.except[0]",
            "spec.policyTypes[0]",
        ]
    );
}

#[test]
fn errors_display_as_one_clear_line() {
    let mut loaded = Loaded::default();
    load_str(
        &policy("{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 79}]}]}"),
        "f.yaml",
        &mut loaded,
    );
    assert_eq!(
        loaded.errors[0].to_string(),
        "f.yaml: NetworkPolicy ns/p: spec.ingress[0].ports[0].endPort: Invalid value: 79: must be \
         greater than or equal to `port`"
    );
    // Several errors stay on one line, separated by "; "; values are quoted as Go quotes them.
    let mut loaded = Loaded::default();
    load_str(
        &policy_meta("{name: \"a\\nb\", namespace: ns, labels: {app: 'x y'}}"),
        "f.yaml",
        &mut loaded,
    );
    let line = loaded.errors[0].to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with("f.yaml: NetworkPolicy ns/a\\nb: metadata.name"),
        "{line}"
    );
    assert!(
        line.contains("metadata.name: Invalid value: \"a\\nb\": a lowercase RFC 1123 subdomain"),
        "{line}"
    );
    assert!(
        line.contains("; metadata.labels: Invalid value: \"x y\""),
        "{line}"
    );
}
