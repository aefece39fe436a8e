//! Manifests from files, folders (recursively, `*.yaml`, `*.yml`, `*.json`) and stdin:
//! multi-document YAML, JSON, and `kind: List`. Every problem is collected, none stops the
//! others from being reported, and nothing panics.
//!
//! Read as `kubectl apply` reads them: a key set twice in a mapping is a syntax error (as
//! `sigs.k8s.io/yaml` has it), a field the type does not have is an error (kubectl's default
//! `--validate=strict`), a namespaced object without a namespace lands in `default`, and each
//! workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
//! CronJob) stands in as one representative pod named after it, with its template's labels
//! and container ports. Kinds Palisade does not read are skipped with a note.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::convert;
use crate::error::InvalidObject;
use crate::types::Object;

/// Where an object came from: `examples/web.yaml` (document 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 1 {
            write!(f, "{} (document {})", self.file, self.document)
        } else {
            f.write_str(&self.file)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: malformed {format}: {message}")]
    Syntax {
        file: String,
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {object}: {field}: {message}")]
    Decode {
        origin: Origin,
        object: String,
        field: String,
        message: String,
    },
    #[error("{origin}: {invalid}")]
    Invalid {
        origin: Origin,
        invalid: InvalidObject,
    },
    #[error("{origin}: {object} is defined twice (first in {first})")]
    Duplicate {
        origin: Origin,
        object: String,
        first: Origin,
    },
}

/// Everything read from a set of paths.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<(Origin, Object)>,
    /// One line per skipped document (unknown kind).
    pub notes: Vec<String>,
    pub errors: Vec<LoadError>,
}

impl Loaded {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn into_objects(self) -> Vec<Object> {
        self.objects.into_iter().map(|(_, o)| o).collect()
    }
}

/// Loads every path; `-` reads stdin. Folders are walked recursively in sorted order.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let path = path.as_ref();
        if path == Path::new("-") {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => load_str(&text, "<stdin>", &mut loaded),
                Err(source) => loaded.errors.push(LoadError::Io {
                    path: "<stdin>".into(),
                    source,
                }),
            }
            continue;
        }
        let mut files = Vec::new();
        manifest_files(path, true, &mut Vec::new(), &mut files, &mut loaded.errors);
        for file in files {
            let name = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => load_str(&text, &name, &mut loaded),
                Err(source) => loaded.errors.push(LoadError::Io { path: name, source }),
            }
        }
    }
    check_duplicates(&mut loaded);
    loaded
}

/// Collects the manifest files under `path`: a file named on the command line is read
/// whatever its extension (a missing one is an Io error); in a folder, only `*.yaml`,
/// `*.yml` and `*.json`, sorted, recursively. A symlink back to a folder being walked (a
/// loop) is not followed; an unreadable entry is reported and the walk goes on.
fn manifest_files(
    path: &Path,
    named: bool,
    visiting: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<LoadError>,
) {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let is_manifest = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    );
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(source) if named || is_manifest => return errors.push(io(source)),
        Err(_) => return,
    };
    if !meta.is_dir() {
        if named || is_manifest {
            out.push(path.to_path_buf());
        }
        return;
    }
    let real = match std::fs::canonicalize(path) {
        Ok(r) => r,
        Err(source) => return errors.push(io(source)),
    };
    if visiting.contains(&real) {
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(source) => return errors.push(io(source)),
    };
    let mut children = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => children.push(e.path()),
            Err(source) => errors.push(io(source)),
        }
    }
    children.sort();
    visiting.push(real);
    for child in children {
        manifest_files(&child, false, visiting, out, errors);
    }
    visiting.pop();
}

/// Parses one file's text (YAML stream, JSON value or stream of JSON values) into `loaded`.
pub fn load_str(text: &str, file: &str, loaded: &mut Loaded) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: serde_json reports exact lines. A YAML flow mapping also starts with '{':
        // when the text is not JSON but is YAML, it is read as YAML.
        let mut values = Vec::new();
        let mut syntax = None;
        for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match doc {
                Ok(value) => values.push(value),
                Err(e) => {
                    syntax = Some(e);
                    break;
                }
            }
        }
        let Some(e) = syntax else {
            for (i, value) in values.into_iter().enumerate() {
                load_value(
                    value,
                    &Origin {
                        file: file.into(),
                        document: i + 1,
                    },
                    loaded,
                );
            }
            return;
        };
        if yaml_documents(text).is_err() {
            loaded.errors.push(LoadError::Syntax {
                file: file.into(),
                format: "JSON",
                line: e.line(),
                column: e.column(),
                message: one_line(&e.to_string()),
            });
            return;
        }
    }
    let (documents, error) = match yaml_documents(text) {
        Ok(docs) => (docs, None),
        Err((docs, e)) => (docs, Some(e)),
    };
    // The documents before a syntax error are sound; after it the stream cannot be trusted.
    for (i, value) in documents.into_iter().enumerate() {
        load_value(
            value,
            &Origin {
                file: file.into(),
                document: i + 1,
            },
            loaded,
        );
    }
    if let Some(e) = error {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        loaded.errors.push(LoadError::Syntax {
            file: file.into(),
            format: "YAML",
            line,
            column,
            message: one_line(&e.to_string()),
        });
    }
}

type YamlResult = Result<Vec<Value>, (Vec<Value>, serde_yaml_ng::Error)>;

/// Every document of a YAML stream, or those before the first error and the error.
fn yaml_documents(text: &str) -> YamlResult {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        match <YamlValue as serde::Deserialize>::deserialize(document) {
            Ok(YamlValue(value)) => docs.push(value),
            Err(e) => return Err((docs, e)),
        }
    }
    Ok(docs)
}

/// Objects from an already-parsed document (a JSON/YAML value: an object, a `kind: List`,
/// or null), e.g. a policy embedded in a conformance case, read as [`load_paths`] reads each
/// document of a file: unknown kinds become notes, duplicates errors.
pub fn load_document(value: Value, origin: &Origin) -> Loaded {
    let mut loaded = Loaded::default();
    load_value(value, origin, &mut loaded);
    check_duplicates(&mut loaded);
    loaded
}

/// Error texts of the parsers may span lines; a report line must not.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A YAML document as the JSON value `sigs.k8s.io/yaml` makes of it: a key set twice in
/// one mapping is an error (`key "x" already set in map`), not a silent overwrite; scalar
/// keys (`1:`, `true:`) become strings.
struct YamlValue(Value);

impl<'de> serde::Deserialize<'de> for YamlValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YamlVisitor).map(YamlValue)
    }
}

struct YamlVisitor;

impl<'de> serde::de::Visitor<'de> for YamlVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(YamlValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(YamlValue(key)) = map.next_key()? {
            let key = match key {
                Value::String(s) => s,
                Value::Null => "null".to_string(),
                Value::Bool(_) | Value::Number(_) => key.to_string(),
                _ => {
                    return Err(serde::de::Error::custom(
                        "a mapping key must be a scalar (string, number or boolean)",
                    ));
                }
            };
            let YamlValue(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "key {key:?} already set in map"
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn describe(value: &Value) -> String {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("<no kind>");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let (kind, name) = (kind.escape_debug(), name.escape_debug());
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {}/{name}", ns.escape_debug()),
        None => format!("{kind} {name}"),
    }
}

/// Decodes `value` as `T`, naming the field path of a type error, then rejects fields `T`
/// does not have, as `kubectl apply` does by default (`--validate=strict`): a misspelt
/// `podSelecter` silently dropped would turn a policy into one selecting every pod.
fn decode<T: DeserializeOwned + Serialize>(
    value: Value,
    origin: &Origin,
    loaded: &mut Loaded,
) -> Option<T> {
    let object = describe(&value);
    let decode_error = |field: String, message: String| LoadError::Decode {
        origin: origin.clone(),
        object: object.clone(),
        field,
        message,
    };
    let typed = match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(t) => t,
        Err(e) => {
            let field = e.path().to_string();
            loaded
                .errors
                .push(decode_error(field, e.into_inner().to_string()));
            return None;
        }
    };
    let known = match serde_json::to_value(&typed) {
        Ok(v) => v,
        Err(e) => {
            loaded
                .errors
                .push(decode_error(String::new(), e.to_string()));
            return None;
        }
    };
    let mut unknown = Vec::new();
    unknown_fields(&value, &known, "", &mut unknown);
    unknown.sort();
    if unknown.is_empty() {
        return Some(typed);
    }
    for (field, name) in unknown {
        loaded
            .errors
            .push(decode_error(field, format!("unknown field {name:?}")));
    }
    None
}

/// Fields present (and not null) in `input` but gone from `known`, the same object read
/// into its type and written back.
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (k, v) in input {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match known.get(k) {
                    _ if v.is_null() => {}
                    None => out.push((p, k.clone())),
                    Some(kv) => unknown_fields(v, kv, &p, out),
                }
            }
        }
        (Value::Array(input), Value::Array(known)) => {
            for (i, (v, kv)) in input.iter().zip(known).enumerate() {
                unknown_fields(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn push(result: Result<Object, InvalidObject>, origin: &Origin, loaded: &mut Loaded) {
    match result {
        Ok(object) => loaded.objects.push((origin.clone(), object)),
        Err(invalid) => loaded.errors.push(LoadError::Invalid {
            origin: origin.clone(),
            invalid,
        }),
    }
}

fn load_value(value: Value, origin: &Origin, loaded: &mut Loaded) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    if let Value::Array(items) = value {
        for item in items {
            load_value(item, origin, loaded);
        }
        return;
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    macro_rules! typed {
        ($ty:ty, $convert:path, $object:path) => {
            if let Some(t) = decode::<$ty>(value, origin, loaded) {
                push($convert(&t).map($object), origin, loaded);
            }
        };
    }
    match (api_version.as_str(), kind.as_str()) {
        (_, "List") | (_, "NamespaceList" | "PodList" | "NetworkPolicyList") => {
            match value.get("items") {
                Some(Value::Array(items)) => {
                    for item in items.clone() {
                        load_value(item, origin, loaded);
                    }
                }
                Some(Value::Null) | None => {}
                Some(_) => loaded.errors.push(LoadError::Decode {
                    origin: origin.clone(),
                    object: kind,
                    field: "items".into(),
                    message: "must be a list".into(),
                }),
            }
        }
        ("v1", "Namespace") => typed!(core::Namespace, convert::namespace, Object::Namespace),
        ("v1", "Pod") => typed!(core::Pod, convert::pod, Object::Pod),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            typed!(
                net::NetworkPolicy,
                convert::network_policy,
                Object::NetworkPolicy
            )
        }
        ("apps/v1", "Deployment") => typed!(apps::Deployment, convert::deployment, Object::Pod),
        ("apps/v1", "StatefulSet") => typed!(apps::StatefulSet, convert::stateful_set, Object::Pod),
        ("apps/v1", "DaemonSet") => typed!(apps::DaemonSet, convert::daemon_set, Object::Pod),
        ("apps/v1", "ReplicaSet") => typed!(apps::ReplicaSet, convert::replica_set, Object::Pod),
        ("v1", "ReplicationController") => {
            typed!(
                core::ReplicationController,
                convert::replication_controller,
                Object::Pod
            )
        }
        ("batch/v1", "Job") => typed!(batch::Job, convert::job, Object::Pod),
        ("batch/v1", "CronJob") => typed!(batch::CronJob, convert::cron_job, Object::Pod),
        _ => {
            let what = if kind.is_empty() {
                "a document without kind".to_string()
            } else {
                format!(
                    "{} ({})",
                    describe(&value),
                    if api_version.is_empty() {
                        "no apiVersion"
                    } else {
                        &api_version
                    }
                )
            };
            loaded.notes.push(format!(
                "{origin}: skipped {what}: not a kind Palisade reads"
            ));
        }
    }
}

fn object_key(object: &Object) -> String {
    match object {
        Object::Namespace(ns) => format!("Namespace {}", ns.name),
        Object::Pod(p) => format!("pod {}", p.key),
        Object::NetworkPolicy(p) => format!("NetworkPolicy {}", p.key),
    }
}

/// Two objects with one identity would make the analysis depend on file order.
fn check_duplicates(loaded: &mut Loaded) {
    let mut first: BTreeMap<String, Origin> = BTreeMap::new();
    let mut keep = Vec::with_capacity(loaded.objects.len());
    for (origin, object) in std::mem::take(&mut loaded.objects) {
        let key = object_key(&object);
        if let Some(first_origin) = first.get(&key) {
            let what = match &object {
                Object::Pod(p) => format!("{} {} (as a pod)", p.source.as_str(), p.key),
                _ => key,
            };
            loaded.errors.push(LoadError::Duplicate {
                origin,
                object: what,
                first: first_origin.clone(),
            });
        } else {
            first.insert(key, origin.clone());
            keep.push((origin, object));
        }
    }
    loaded.objects = keep;
}
