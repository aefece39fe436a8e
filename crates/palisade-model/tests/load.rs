//! Manifests in: files, folders, YAML streams, JSON, `kind: List`, workloads as one
//! representative pod, and every way a manifest can be wrong, reported and never a panic.

use std::fs;

use palisade_model::load::{
    LoadError, Loaded, Origin, load_document, load_paths, load_str, load_str_with,
};
use palisade_model::{FieldValidation, Object, Options, Pod, PodSource, PortSpec, Protocol};
use proptest::prelude::*;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team\n  \
                   labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: i\n    \
                   ports: [{name: http, containerPort: 8080}]\nstatus:\n  podIP: 10.0.0.1\n";
const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: \
                      deny\n  namespace: team\nspec:\n  podSelector: {}\n";

fn load(text: &str, file: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_str(text, file, &mut loaded);
    loaded
}

fn errors(loaded: &Loaded) -> Vec<String> {
    loaded.errors.iter().map(ToString::to_string).collect()
}

fn pods(loaded: &Loaded) -> Vec<&Pod> {
    loaded
        .objects
        .iter()
        .filter_map(|(_, o)| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn names(loaded: &Loaded) -> Vec<String> {
    loaded
        .objects
        .iter()
        .map(|(_, o)| match o {
            Object::Namespace(n) => format!("Namespace {}", n.name),
            Object::Pod(p) => format!("Pod {}", p.key),
            Object::NetworkPolicy(p) => format!("NetworkPolicy {}", p.key),
        })
        .collect()
}

#[test]
fn multi_document_yaml_with_empty_documents() {
    let text = format!("---\n{NS}---\n---\n\n---\n{POD}...\n---\n{POLICY}---\n");
    let loaded = load(&text, "all.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    assert_eq!(
        names(&loaded),
        ["Namespace team", "Pod team/web", "NetworkPolicy team/deny"]
    );
    // Documents are numbered as they stand in the file, empty ones included.
    let docs: Vec<usize> = loaded.objects.iter().map(|(o, _)| o.document).collect();
    assert_eq!(docs, [1, 4, 5]);
    assert_eq!(loaded.objects[1].0.to_string(), "all.yaml (document 4)");
    let pod = pods(&loaded)[0];
    assert_eq!(pod.ips[0].to_string(), "10.0.0.1");
    assert_eq!(pod.resolve_named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(pod.source, PodSource::Pod);
}

#[test]
fn an_empty_file_is_no_object_and_no_error() {
    for text in ["", "\n\n", "---\n", "# only a comment\n", "\u{feff}"] {
        let loaded = load(text, "empty.yaml");
        assert!(
            loaded.is_ok() && loaded.objects.is_empty() && loaded.notes.is_empty(),
            "{text:?}"
        );
    }
}

#[test]
fn json_file_and_json_stream() {
    let json = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}"#;
    let loaded = load(json, "ns.json");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(names(&loaded), ["Namespace team"]);
    let stream = format!("{json}\n{}", json.replace("team", "other"));
    assert_eq!(
        names(&load(&stream, "ns.json")),
        ["Namespace team", "Namespace other"]
    );
    // With a byte-order mark.
    assert_eq!(
        names(&load(&format!("\u{feff}{json}"), "ns.json")),
        ["Namespace team"]
    );
}

#[test]
fn yaml_flow_mapping_is_not_mistaken_for_json() {
    let loaded = load(
        "{apiVersion: v1, kind: Namespace, metadata: {name: team}}\n",
        "ns.yaml",
    );
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(names(&loaded), ["Namespace team"]);
}

#[test]
fn json_kind_list() {
    let json = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "deny", "namespace": "team"}, "spec": {"podSelector": {}}}
  ]
}"#;
    let loaded = load(json, "list.json");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(
        names(&loaded),
        ["Namespace team", "NetworkPolicy team/deny"]
    );
}

#[test]
fn yaml_kind_list_and_typed_lists() {
    let yaml = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n",
        "{apiVersion: v1, kind: Namespace, metadata: {name: team}}",
        "{apiVersion: v1, kind: Pod, metadata: {name: web, namespace: team}}"
    );
    let loaded = load(&yaml, "list.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(names(&loaded), ["Namespace team", "Pod team/web"]);
    let typed = "apiVersion: v1\nkind: PodList\nitems: [{apiVersion: v1, kind: Pod, metadata: \
                 {name: a}}]\n";
    assert_eq!(names(&load(typed, "pods.yaml")), ["Pod default/a"]);
    let bad = load("apiVersion: v1\nkind: List\nitems: {a: b}\n", "list.yaml");
    assert!(matches!(&bad.errors[..], [LoadError::Decode { field, .. }] if field == "items"));
}

#[test]
fn folder_walked_recursively_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
    write("b.yaml", &ns("b"));
    write("a/z.yml", &ns("az"));
    write(
        "a/deep/er/x.json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ax"}}"#,
    );
    write("a/b.yaml", &ns("ab"));
    write("c.txt", &ns("ignored-txt"));
    write("README.md", "# not a manifest\n");
    write("d.YAML.bak", &ns("ignored-bak"));
    let loaded = load_paths(&[root]);
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    // Sorted by path: a/b.yaml, a/deep/er/x.json, a/z.yml, b.yaml.
    assert_eq!(
        names(&loaded),
        [
            "Namespace ab",
            "Namespace ax",
            "Namespace az",
            "Namespace b"
        ]
    );
    assert!(loaded.objects[1].0.file.ends_with("x.json"));
    // A file named explicitly is read whatever its extension.
    let loaded = load_paths(&[root.join("c.txt")]);
    assert_eq!(names(&loaded), ["Namespace ignored-txt"]);
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_is_walked_once() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("ns.yaml"), NS).unwrap();
    std::os::unix::fs::symlink(dir.path(), sub.join("loop")).unwrap();
    let loaded = load_paths(&[dir.path()]);
    // The loop is not followed back into the folder being walked.
    assert_eq!(names(&loaded), ["Namespace team"]);
}

fn workload(kind: &str, api: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: w\n  namespace: team\nspec:\n{spec}"
    )
}

const TEMPLATE: &str = "    metadata:\n      labels: {app: w, tier: back}\n    spec:\n      \
                        containers:\n      - name: c\n        image: i\n        ports:\n        \
                        - {name: http, containerPort: 8080}\n        - {containerPort: 53, \
                        protocol: UDP}\n";

#[test]
fn each_workload_kind_becomes_one_representative_pod() {
    let selector = "  selector: {matchLabels: {app: w}}\n";
    let template = format!("  template:\n{TEMPLATE}");
    let job_template = TEMPLATE
        .replace("\n    ", "\n        ")
        .replacen("    ", "        ", 1);
    let cases = [
        (
            PodSource::Deployment,
            workload("Deployment", "apps/v1", &format!("{selector}{template}")),
        ),
        (
            PodSource::StatefulSet,
            workload(
                "StatefulSet",
                "apps/v1",
                &format!("  serviceName: w\n{selector}{template}"),
            ),
        ),
        (
            PodSource::DaemonSet,
            workload("DaemonSet", "apps/v1", &format!("{selector}{template}")),
        ),
        (
            PodSource::ReplicaSet,
            workload("ReplicaSet", "apps/v1", &format!("{selector}{template}")),
        ),
        (
            PodSource::ReplicationController,
            workload(
                "ReplicationController",
                "v1",
                &format!("  selector: {{app: w}}\n{template}"),
            ),
        ),
        (PodSource::Job, workload("Job", "batch/v1", &template)),
        (
            PodSource::CronJob,
            workload(
                "CronJob",
                "batch/v1",
                &format!(
                    "  schedule: '*/5 * * * *'\n  jobTemplate:\n    spec:\n      template:\n{job_template}"
                ),
            ),
        ),
    ];
    for (source, yaml) in cases {
        let loaded = load(&yaml, "w.yaml");
        assert!(loaded.is_ok(), "{source:?}: {:?}\n{yaml}", errors(&loaded));
        let pods = pods(&loaded);
        assert_eq!(pods.len(), 1, "{source:?}");
        let pod = pods[0];
        assert_eq!(pod.source, source);
        assert_eq!(pod.key.to_string(), "team/w", "{source:?}");
        let labels: Vec<(&str, &str)> = pod
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("app", "w"), ("tier", "back")], "{source:?}");
        assert_eq!(
            pod.resolve_named_port("http", Protocol::Tcp),
            Some(8080),
            "{source:?}"
        );
        assert_eq!(pod.ports.len(), 2, "{source:?}");
        assert_eq!(pod.ports[1].protocol, Protocol::Udp, "{source:?}");
        assert!(pod.ips.is_empty(), "{source:?}");
    }
}

#[test]
fn sidecar_ports_count_and_init_container_ports_do_not() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  initContainers:\n  - \
                {name: setup, image: i, ports: [{containerPort: 1000}]}\n  - {name: proxy, image: \
                i, restartPolicy: Always, ports: [{name: proxy, containerPort: 15001}]}\n  \
                containers: [{name: c, image: i}]\n";
    let loaded = load(yaml, "p.yaml");
    let pod = pods(&loaded)[0];
    assert_eq!(pod.ports.len(), 1);
    assert_eq!(pod.resolve_named_port("proxy", Protocol::Tcp), Some(15001));
}

#[test]
fn namespaced_objects_without_namespace_land_in_default() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: \
                networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ''}\n\
                spec: {podSelector: {}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: \
                {name: d}\nspec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: \
                {a: b}}}}\n";
    let loaded = load(text, "f.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(
        names(&loaded),
        ["Pod default/a", "NetworkPolicy default/p", "Pod default/d"]
    );
}

#[test]
fn unknown_kinds_are_skipped_with_one_note_naming_the_file() {
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: team}}\n---\n{NS}---\n\
         apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {{name: old}}\n---\n\
         just: data\n"
    );
    let loaded = load(&text, "mixed.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(names(&loaded), ["Namespace team"]);
    assert_eq!(loaded.notes.len(), 3, "{:?}", loaded.notes);
    assert_eq!(
        loaded.notes[0],
        "mixed.yaml: skipped Service team/s (v1): not a kind Palisade reads"
    );
    assert!(
        loaded.notes[1]
            .starts_with("mixed.yaml (document 3): skipped NetworkPolicy old (extensions/v1beta1)")
    );
    assert!(
        loaded.notes[2].starts_with("mixed.yaml (document 4): skipped a document without kind")
    );
}

#[test]
fn malformed_yaml_is_a_syntax_error_naming_the_file_and_line() {
    // The second document opens a flow sequence on line 7 and never closes it: the parser
    // notices on line 8, and names line 7 as where the sequence began.
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\n\
                kind: Pod\nmetadata: {name: web, labels: [app\nspec: {}\n";
    let loaded = load(text, "broken.yaml");
    assert_eq!(loaded.errors.len(), 1, "{:?}", errors(&loaded));
    match &loaded.errors[0] {
        LoadError::Syntax {
            file,
            format,
            line,
            column,
            message,
        } => {
            assert_eq!(
                (file.as_str(), *format, *line, *column),
                ("broken.yaml", "YAML", 8, 5)
            );
            assert!(
                message.contains("flow sequence at line 7 column 31"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    let line = loaded.errors[0].to_string();
    assert!(
        line.starts_with("broken.yaml:8:5: malformed YAML: "),
        "{line}"
    );
    assert!(line.contains("malformed YAML"), "{line}");
    assert!(!line.contains('\n'));
    // The documents before the error are read.
    assert_eq!(names(&loaded), ["Namespace team"]);

    // A tab indentation on line 3.
    let loaded = load(
        "apiVersion: v1\nkind: Namespace\n\tmetadata: {}\n",
        "tab.yaml",
    );
    assert!(
        matches!(&loaded.errors[..], [LoadError::Syntax { line: 3, .. }]),
        "{:?}",
        errors(&loaded)
    );
}

#[test]
fn a_key_set_twice_is_an_error_not_an_overwrite() {
    // sigs.k8s.io/yaml refuses it: `key "podSelector" already set in map`.
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  \
                podSelector: {matchLabels: {app: db}}\n  podSelector: {}\n";
    let loaded = load(text, "dup.yaml");
    assert!(loaded.objects.is_empty());
    let line = errors(&loaded).join("\n");
    assert!(
        line.starts_with("dup.yaml:") && line.contains("already set in map"),
        "{line}"
    );
}

#[test]
fn malformed_json_is_a_syntax_error_with_its_line() {
    let text = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Namespace\",\n  \"metadata\": {\"name\": \
                \"team\"},,\n}\n";
    let loaded = load(text, "bad.json");
    assert!(
        matches!(
            &loaded.errors[..],
            [LoadError::Syntax {
                format: "JSON",
                line: 4,
                ..
            }]
        ),
        "{:?}",
        errors(&loaded)
    );
    assert!(errors(&loaded)[0].starts_with("bad.json:4:"));
}

#[test]
fn a_type_error_is_a_decode_error_naming_the_field_path() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, \
                namespace: team}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: \
                [1]\n";
    let loaded = load(text, "type.yaml");
    match &loaded.errors[..] {
        [LoadError::Decode { field, object, .. }] => {
            assert_eq!(field, "spec.ingress[0].ports[0].port");
            assert_eq!(object, "NetworkPolicy team/p");
        }
        other => panic!("{other:?}"),
    }
    let line = errors(&loaded)[0].clone();
    assert!(
        line.starts_with(
            "type.yaml: NetworkPolicy team/p: spec.ingress[0].ports[0].port: invalid type"
        ),
        "{line}"
    );
    // A label value that YAML reads as a number is not a string.
    let loaded = load(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {v: 1}}\n",
        "n.yaml",
    );
    assert!(
        matches!(&loaded.errors[..], [LoadError::Decode { field, .. }] if field == "metadata.labels.v"),
        "{:?}",
        errors(&loaded)
    );
}

#[test]
fn an_unknown_field_is_rejected_as_kubectl_does() {
    // A misspelt podSelector silently dropped would select every pod of the namespace.
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, \
                namespace: team, creationTimestamp: null}\nspec:\n  podSelecter: {matchLabels: \
                {app: db}}\n  ingress: [{from: [{podSelector: {}, namespaceSelecter: {}}]}]\n";
    let loaded = load(text, "typo.yaml");
    assert!(loaded.objects.is_empty());
    let fields: Vec<&str> = loaded
        .errors
        .iter()
        .map(|e| match e {
            LoadError::Decode { field, .. } => field.as_str(),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].from[0].namespaceSelecter",
            "spec.podSelecter"
        ]
    );
    assert_eq!(
        errors(&loaded)[1],
        "typo.yaml: NetworkPolicy team/p: spec.podSelecter: unknown field \"podSelecter\""
    );
    // Fields the types know, empty or null, round-trip; a realistic manifest loads.
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  annotations: {a: \
                b}\n  creationTimestamp: null\nspec:\n  replicas: 2\n  strategy: {}\n  selector: \
                {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}, \
                creationTimestamp: null}\n    spec:\n      containers:\n      - name: c\n        \
                image: i\n        resources: {limits: {cpu: 1, memory: 1Gi}, requests: {}}\n        \
                env: [{name: X, value: '1'}]\n        securityContext: {}\n      volumes: [{name: \
                v, emptyDir: {}}]\nstatus: {}\n";
    let loaded = load(text, "d.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
}

#[test]
fn duplicates_are_reported_and_the_first_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), POLICY).unwrap();
    fs::write(dir.path().join("b.yaml"), format!("{NS}---\n{POLICY}")).unwrap();
    let loaded = load_paths(&[dir.path()]);
    assert_eq!(
        names(&loaded),
        ["NetworkPolicy team/deny", "Namespace team"]
    );
    match &loaded.errors[..] {
        [
            LoadError::Duplicate {
                origin,
                object,
                first,
            },
        ] => {
            assert!(origin.file.ends_with("b.yaml") && origin.document == 2);
            assert!(first.file.ends_with("a.yaml"));
            assert_eq!(object, "NetworkPolicy team/deny");
        }
        other => panic!("{other:?}"),
    }
    // A workload and a pod of one name would be one identity.
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web, namespace: team}\n\
              spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: \
              web}}}}\n";
    fs::write(dir.path().join("c.yaml"), format!("{POD}---\n{rs}")).unwrap();
    let loaded = load_paths(&[dir.path().join("c.yaml")]);
    assert!(
        errors(&loaded)
            .iter()
            .any(|e| e.contains("ReplicaSet team/web (as a pod) is defined twice")),
        "{:?}",
        errors(&loaded)
    );
}

#[test]
fn a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let loaded = load_paths(&[&missing, &dir.path().to_path_buf()]);
    match &loaded.errors[..] {
        [LoadError::Io { path, .. }] => assert!(path.ends_with("nope.yaml")),
        other => panic!("{other:?}"),
    }
    assert!(errors(&loaded)[0].contains("nope.yaml: "));
}

#[test]
fn a_parsed_document_loads_like_a_file_document() {
    let origin = Origin {
        file: "case".into(),
        document: 1,
    };
    let value = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
    ]});
    let loaded = load_document(value, &origin);
    assert_eq!(names(&loaded), ["Namespace a"]);
    assert_eq!(loaded.notes.len(), 1);
    assert!(matches!(&loaded.errors[..], [LoadError::Duplicate { .. }]));
    assert!(
        load_document(serde_json::Value::Null, &origin)
            .objects
            .is_empty()
    );
}

#[test]
fn ports_keep_their_meaning() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n\
                spec:\n  podSelector: {}\n  egress: [{ports: [{port: '53', protocol: UDP}, \
                {port: 53}]}]\n";
    // '53' quoted is a (bad) named port: the API server reads an IntOrString string as a name.
    let loaded = load(text, "p.yaml");
    assert!(errors(&loaded)[0].contains(
        "spec.egress[0].ports[0].port: Invalid value: \"53\": must contain at least one letter"
    ));
    let loaded = load(&text.replace("'53'", "dns"), "p.yaml");
    let Object::NetworkPolicy(p) = &loaded.objects[0].1 else {
        panic!()
    };
    assert_eq!(p.egress[0].ports[0].port, PortSpec::Named("dns".into()));
    assert_eq!(
        p.egress[0].ports[1].port,
        PortSpec::Range { from: 53, to: 53 }
    );
}

fn assert_nothing_panics(text: &str) {
    let mut loaded = Loaded::default();
    load_str(text, "fuzz.yaml", &mut loaded);
    for e in &loaded.errors {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

/// Fragments of manifests to splice, so that random text reaches deep into the decoders.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(POD.to_string()),
        Just(POLICY.to_string()),
        Just(NS.to_string()),
        Just(workload(
            "Deployment",
            "apps/v1",
            &format!("  selector: {{matchLabels: {{app: w}}}}\n  template:\n{TEMPLATE}")
        )),
        Just("apiVersion: v1\nkind: List\nitems: [".to_string()),
        Just("  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [".to_string()),
        Just("  ports: [{port: 65536, endPort: -1, protocol: ICMP}]\n".to_string()),
        Just("status: {podIPs: [{ip: '::ffff:1.2.3.4'}, {ip: 010.0.0.1}]}\n".to_string()),
        Just("---\n".to_string()),
        Just("&a [*a, *a]\n".to_string()),
        Just(
            "{\"kind\": \"Pod\", \"apiVersion\": \"v1\", \"metadata\": {\"name\": 1}}".to_string()
        ),
        "[ -~\t\n]{0,40}",
        "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        assert_nothing_panics(&text);
    }

    #[test]
    fn mangled_manifests_never_panic(
        parts in proptest::collection::vec(fragment(), 1..6),
        cut in 0usize..400,
        byte in any::<u8>(),
        at in 0usize..400,
    ) {
        let text = parts.concat();
        assert_nothing_panics(&text);
        // Cut short, and with one byte replaced (kept UTF-8 by replacing lossily).
        let cut = cut.min(text.len());
        assert_nothing_panics(&String::from_utf8_lossy(&text.as_bytes()[..cut]));
        let mut bytes = text.into_bytes();
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        assert_nothing_panics(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn known_nasty_inputs_do_not_panic_or_hang() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_map = "a: ".repeat(2_000) + "b";
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: \
                  &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, \
                  *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, \
                  *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    for text in [
        deep.as_str(),
        deep_map.as_str(),
        laughs,
        "{\"kind\": \"List\", \"apiVersion\": \"v1\", \"items\": [[[[{\"kind\": \"List\"}]]]]}",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIPs: [{ip: '1::2::3'}], podIP: ''}\n",
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p}\nspec: {ingress: [{ports: [{port: 2147483647, endPort: -2147483648}]}]}\n",
        "!!binary aGVsbG8=\n",
        "? [a, b]\n: c\n",
        "1: 2\ntrue: x\n~: y\n",
        "\u{0}\u{1}\u{7f}",
    ] {
        assert_nothing_panics(text);
    }
}

fn load_with(text: &str, file: &str, fields: FieldValidation) -> Loaded {
    let mut loaded = Loaded::default();
    let opts = Options {
        fields,
        ..Default::default()
    };
    load_str_with(text, file, &opts, &mut loaded);
    loaded
}

/// A typed list as the API returns it (`GET /api/v1/pods`): items carry no kind and no
/// apiVersion; the list kind names them.
fn api_list(api_version: &str, list_kind: &str, items: &[&str]) -> String {
    format!(
        "{{\"apiVersion\": \"{api_version}\", \"kind\": \"{list_kind}\", \"metadata\": \
         {{\"resourceVersion\": \"42\"}}, \"items\": [{}]}}",
        items.join(", ")
    )
}

const JSON_TEMPLATE: &str = r#"{"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}"#;

#[test]
fn typed_lists_of_every_kind_name_their_items_kind() {
    let meta = |name: &str| format!(r#""metadata": {{"name": "{name}", "namespace": "team"}}"#);
    let apps_spec = format!(
        r#""spec": {{"selector": {{"matchLabels": {{"app": "w"}}}}, "template": {JSON_TEMPLATE}}}"#
    );
    let rows: Vec<(&str, &str, String, &str)> = vec![
        (
            "v1",
            "NamespaceList",
            r#"{"metadata": {"name": "team"}}"#.to_string(),
            "Namespace team",
        ),
        (
            "v1",
            "PodList",
            format!(
                r#"{{{}, "spec": {{"containers": [{{"name": "c", "image": "i"}}]}}, "status": {{"podIP": "10.0.0.1", "podIPs": [{{"ip": "10.0.0.1"}}], "phase": "Running"}}}}"#,
                meta("p")
            ),
            "Pod team/p",
        ),
        (
            "networking.k8s.io/v1",
            "NetworkPolicyList",
            format!(
                r#"{{{}, "spec": {{"podSelector": {{}}, "policyTypes": ["Ingress"]}}}}"#,
                meta("np")
            ),
            "NetworkPolicy team/np",
        ),
        (
            "apps/v1",
            "DeploymentList",
            format!("{{{}, {apps_spec}}}", meta("d")),
            "Pod team/d",
        ),
        (
            "apps/v1",
            "StatefulSetList",
            format!("{{{}, {apps_spec}}}", meta("s")),
            "Pod team/s",
        ),
        (
            "apps/v1",
            "DaemonSetList",
            format!("{{{}, {apps_spec}}}", meta("ds")),
            "Pod team/ds",
        ),
        (
            "apps/v1",
            "ReplicaSetList",
            format!("{{{}, {apps_spec}}}", meta("rs")),
            "Pod team/rs",
        ),
        (
            "v1",
            "ReplicationControllerList",
            format!(
                r#"{{{}, "spec": {{"selector": {{"app": "w"}}, "template": {JSON_TEMPLATE}}}}}"#,
                meta("rc")
            ),
            "Pod team/rc",
        ),
        (
            "batch/v1",
            "JobList",
            format!(
                r#"{{{}, "spec": {{"template": {JSON_TEMPLATE}}}}}"#,
                meta("j")
            ),
            "Pod team/j",
        ),
        (
            "batch/v1",
            "CronJobList",
            format!(
                r#"{{{}, "spec": {{"schedule": "* * * * *", "jobTemplate": {{"spec": {{"template": {JSON_TEMPLATE}}}}}}}}}"#,
                meta("cj")
            ),
            "Pod team/cj",
        ),
    ];
    for (api_version, kind, item, want) in rows {
        let text = api_list(api_version, kind, &[&item]);
        let loaded = load(&text, "list.json");
        assert!(loaded.is_ok(), "{kind}: {:?}", errors(&loaded));
        assert!(loaded.notes.is_empty(), "{kind}: {:?}", loaded.notes);
        assert_eq!(names(&loaded), [want], "{kind}");
        // The same list as `kubectl get -o yaml` saves it.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let yaml = serde_yaml_ng::to_string(&value).unwrap();
        assert_eq!(names(&load(&yaml, "list.yaml")), [want], "{kind} as YAML");
    }
    // An item's own kind and apiVersion, when present, are kept.
    let text = api_list(
        "v1",
        "PodList",
        &[
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}"#,
            r#"{"metadata": {"name": "b"}}"#,
        ],
    );
    assert_eq!(
        names(&load(&text, "l.json")),
        ["Pod default/a", "Pod default/b"]
    );
}

#[test]
fn documents_palisade_cannot_read_say_what_they_were() {
    let text = "apiVersion: v1\nkind: ServiceList\nitems: [{metadata: {name: s}}, {metadata: {name: t}}]\n---\n\
                apiVersion: v1\nkind: List\nitems: [{metadata: {name: loose}}]\n---\n\
                metadata: {name: x}\nspec: {}\n---\n- 1\n";
    let loaded = load(text, "m.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert!(loaded.objects.is_empty());
    assert_eq!(
        loaded.notes,
        [
            "m.yaml: skipped a ServiceList (v1) of 2 item(s): not a kind Palisade reads",
            "m.yaml (document 2): skipped an item of a List: a document without kind named \
             loose (keys: metadata): a List's items must say their kind",
            "m.yaml (document 3): skipped a document without kind named x (keys: metadata, \
             spec): not a kind Palisade reads",
            "m.yaml (document 4): skipped a document without kind (a number): not a kind \
             Palisade reads",
        ]
    );
}

#[test]
fn helm_rendered_output_loads() {
    // `helm template` output: `# Source:` comments, documents that are only comments,
    // a leading `---`, and kinds Palisade does not read in between.
    let text = r#"---
# Source: shop/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: shop
---
# Source: shop/templates/empty.yaml
---
# Source: shop/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels:
    helm.sh/chart: shop-0.1.0
    app.kubernetes.io/managed-by: Helm
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: shop
  template:
    metadata:
      labels:
        app.kubernetes.io/name: shop
    spec:
      containers:
        - name: shop
          image: "nginx:1.27"
          ports:
            - name: http
              containerPort: 80
              protocol: TCP
---
# Source: shop/templates/networkpolicy.yaml
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: shop
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: shop
  ingress:
    - ports:
        - port: http
"#;
    let loaded = load(text, "rendered.yaml");
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert_eq!(
        names(&loaded),
        ["Pod default/shop", "NetworkPolicy default/shop"]
    );
    assert_eq!(loaded.notes.len(), 1, "{:?}", loaded.notes);
}

#[test]
fn unknown_and_duplicate_fields_follow_validate() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, \
                namespace: team}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  \
                podSelector: {matchLabels: {app: web}}\n  colour: blue\n";
    // strict: the duplicate key stops the document.
    let strict = load_with(text, "p.yaml", FieldValidation::Strict);
    assert!(strict.objects.is_empty());
    assert!(
        errors(&strict)[0].contains("key \"podSelector\" already set in map"),
        "{:?}",
        errors(&strict)
    );
    // warn: read, the last value wins, one warning per field.
    let warn = load_with(text, "p.yaml", FieldValidation::Warn);
    assert!(warn.is_ok(), "{:?}", errors(&warn));
    let Object::NetworkPolicy(p) = &warn.objects[0].1 else {
        panic!()
    };
    assert_eq!(p.pod_selector.match_labels["app"], "web");
    assert_eq!(
        warn.warnings,
        [
            "p.yaml: NetworkPolicy team/p: duplicate field \"spec.podSelector\" (the last \
             value is used)",
            "p.yaml: NetworkPolicy team/p: unknown field \"spec.colour\" (ignored)",
        ]
    );
    // ignore: read, silently.
    let ignore = load_with(text, "p.yaml", FieldValidation::Ignore);
    assert!(ignore.is_ok() && ignore.warnings.is_empty());
    assert_eq!(ignore.objects.len(), 1);
    // Unknown fields alone, strict: rejected (as before).
    let typo = "apiVersion: v1\nkind: Namespace\nmetadata: {name: t, colour: x}\n";
    assert!(!load_with(typo, "t.yaml", FieldValidation::Strict).is_ok());
    // JSON duplicates are caught too.
    let json =
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "name": "b"}}"#;
    assert!(!load(json, "d.json").is_ok());
    let warned = load_with(json, "d.json", FieldValidation::Warn);
    assert_eq!(names(&warned), ["Namespace b"]);
    assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
}

#[test]
fn one_line_per_invalid_field() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n\
                spec: {podSelector: {}, ingress: [{ports: [{port: 0}, {protocol: ICMP}]}]}\n";
    let loaded = load(text, "p.yaml");
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(
        loaded.errors[0].lines(),
        [
            "p.yaml: NetworkPolicy default/p: spec.ingress[0].ports[0].port: Invalid value: 0: \
             must be between 1 and 65535, inclusive",
            "p.yaml: NetworkPolicy default/p: spec.ingress[0].ports[1].protocol: Unsupported \
             value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ]
    );
}

/// `testdata/versions/new-fields.yaml`: a Pod and a Job as a v1.37 cluster returns them,
/// with fields added in Kubernetes 1.35, 1.36 and 1.37 (in spec and status).
fn new_fields_manifest() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/versions/new-fields.yaml"
    );
    fs::read_to_string(path).unwrap()
}

#[test]
fn fields_added_up_to_1_37_are_known_under_strict_validation() {
    // The v1.37 API server knows these fields; read with v1.34's types they were
    // "unknown field" errors and the objects were dropped.
    let loaded = load_with(
        &new_fields_manifest(),
        "new-fields.yaml",
        FieldValidation::Strict,
    );
    assert!(loaded.is_ok(), "{:?}", errors(&loaded));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let pods = pods(&loaded);
    assert_eq!(pods.len(), 2);
    assert_eq!(pods[0].key.to_string(), "shop/web-7d9f8b6c5-x2x4q");
    assert_eq!(
        pods[0].ips,
        ["10.0.1.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(pods[0].ports[0].name.as_deref(), Some("http"));
    assert_eq!(pods[1].source, PodSource::Job);
    assert_eq!(pods[1].labels["app"], "report");
}

#[test]
fn a_misspelt_field_next_to_new_ones_is_still_unknown() {
    let text = new_fields_manifest()
        .replace("scheduling: {}", "scheduling: {}\n  schedulng: {}")
        .replace(
            "allocatedResources: {cpu: 100m, memory: 64Mi}",
            "allocatedResources: {cpu: 100m, memory: 64Mi}\n  alocatedResources: {cpu: 1}",
        )
        .replace("mode: Plaintext}", "mode: Plaintext, modes: TLS}");
    let loaded = load_with(&text, "new-fields.yaml", FieldValidation::Strict);
    assert!(loaded.objects.is_empty(), "{:?}", names(&loaded));
    assert_eq!(
        errors(&loaded),
        [
            "new-fields.yaml: Pod shop/web-7d9f8b6c5-x2x4q: status.alocatedResources: unknown \
             field \"alocatedResources\"",
            "new-fields.yaml (document 2): Job shop/report: spec.schedulng: unknown field \
             \"schedulng\"",
            "new-fields.yaml (document 2): Job shop/report: \
             spec.template.spec.containers[0].livenessProbe.grpc.modes: unknown field \"modes\"",
        ]
    );
}
