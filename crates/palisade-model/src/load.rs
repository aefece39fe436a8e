//! Manifests from files, folders (recursively, `*.yaml`, `*.yml`, `*.json`) and stdin:
//! multi-document YAML, JSON, and `kind: List`. Every problem is collected, none stops the
//! others from being reported, and nothing panics.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
use k8s_openapi::api::networking::v1 as net;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::convert;
use crate::error::InvalidObject;
use crate::types::{Object, PodSource};

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
    Io { path: String, source: std::io::Error },
    #[error("{file}:{line}:{column}: malformed {format}: {message}")]
    Syntax { file: String, format: &'static str, line: usize, column: usize, message: String },
    #[error("{origin}: {object}: {field}: {message}")]
    Decode { origin: Origin, object: String, field: String, message: String },
    #[error("{origin}: {invalid}")]
    Invalid { origin: Origin, invalid: InvalidObject },
    #[error("{origin}: {object} is defined twice (first in {first})")]
    Duplicate { origin: Origin, object: String, first: Origin },
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
                Err(source) => loaded.errors.push(LoadError::Io { path: "<stdin>".into(), source }),
            }
            continue;
        }
        match manifest_files(path) {
            Ok(files) => {
                for file in files {
                    let name = file.display().to_string();
                    match std::fs::read_to_string(&file) {
                        Ok(text) => load_str(&text, &name, &mut loaded),
                        Err(source) => loaded.errors.push(LoadError::Io { path: name, source }),
                    }
                }
            }
            Err(source) => {
                loaded.errors.push(LoadError::Io { path: path.display().to_string(), source })
            }
        }
    }
    check_duplicates(&mut loaded);
    loaded
}

fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        // A named file is read whatever its extension; a missing one errors on read.
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            out.extend(manifest_files(&entry)?);
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Parses one file's text (YAML stream or JSON) into `loaded`.
pub fn load_str(text: &str, file: &str, loaded: &mut Loaded) {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: serde_json reports exact lines; a JSON stream of several values is allowed.
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, doc) in stream.enumerate() {
            match doc {
                Ok(value) => {
                    load_value(value, &Origin { file: file.into(), document: i + 1 }, loaded)
                }
                Err(e) => {
                    loaded.errors.push(LoadError::Syntax {
                        file: file.into(),
                        format: "JSON",
                        line: e.line(),
                        column: e.column(),
                        message: e.to_string(),
                    });
                    return;
                }
            }
        }
        return;
    }
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let origin = Origin { file: file.into(), document: i + 1 };
        match Value::deserialize_from(document) {
            Ok(value) => load_value(value, &origin, loaded),
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                loaded.errors.push(LoadError::Syntax {
                    file: file.into(),
                    format: "YAML",
                    line,
                    column,
                    message: e.to_string(),
                });
                // After a syntax error the rest of the stream cannot be trusted.
                return;
            }
        }
    }
}

trait DeserializeFrom: Sized {
    fn deserialize_from(d: serde_yaml_ng::Deserializer<'_>) -> Result<Self, serde_yaml_ng::Error>;
}

impl DeserializeFrom for Value {
    fn deserialize_from(d: serde_yaml_ng::Deserializer<'_>) -> Result<Self, serde_yaml_ng::Error> {
        serde::Deserialize::deserialize(d)
    }
}

fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("<no kind>");
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("<unnamed>");
    match meta.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn decode<T: DeserializeOwned>(value: Value, origin: &Origin, loaded: &mut Loaded) -> Option<T> {
    let object = describe(&value);
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let field = e.path().to_string();
            loaded.errors.push(LoadError::Decode {
                origin: origin.clone(),
                object,
                field,
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

fn push(result: Result<Object, InvalidObject>, origin: &Origin, loaded: &mut Loaded) {
    match result {
        Ok(object) => loaded.objects.push((origin.clone(), object)),
        Err(invalid) => loaded.errors.push(LoadError::Invalid { origin: origin.clone(), invalid }),
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
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let api_version =
        value.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    macro_rules! workload {
        ($ty:ty, $source:expr, |$w:ident| $template:expr, $path:expr) => {
            if let Some($w) = decode::<$ty>(value, origin, loaded) {
                let template = $template;
                push(
                    convert::workload($source, &$w.metadata, template, $path)
                        .map(Object::Pod),
                    origin,
                    loaded,
                );
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
        ("v1", "Namespace") => {
            if let Some(ns) = decode::<core::Namespace>(value, origin, loaded) {
                push(convert::namespace(&ns).map(Object::Namespace), origin, loaded);
            }
        }
        ("v1", "Pod") => {
            if let Some(pod) = decode::<core::Pod>(value, origin, loaded) {
                push(convert::pod(&pod).map(Object::Pod), origin, loaded);
            }
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            if let Some(p) = decode::<net::NetworkPolicy>(value, origin, loaded) {
                push(convert::network_policy(&p).map(Object::NetworkPolicy), origin, loaded);
            }
        }
        ("apps/v1", "Deployment") => workload!(
            apps::Deployment,
            PodSource::Deployment,
            |w| w.spec.as_ref().map(|s| &s.template),
            "spec.template"
        ),
        ("apps/v1", "StatefulSet") => workload!(
            apps::StatefulSet,
            PodSource::StatefulSet,
            |w| w.spec.as_ref().map(|s| &s.template),
            "spec.template"
        ),
        ("apps/v1", "DaemonSet") => workload!(
            apps::DaemonSet,
            PodSource::DaemonSet,
            |w| w.spec.as_ref().map(|s| &s.template),
            "spec.template"
        ),
        ("apps/v1", "ReplicaSet") => workload!(
            apps::ReplicaSet,
            PodSource::ReplicaSet,
            |w| w.spec.as_ref().and_then(|s| s.template.as_ref()),
            "spec.template"
        ),
        ("v1", "ReplicationController") => workload!(
            core::ReplicationController,
            PodSource::ReplicationController,
            |w| w.spec.as_ref().and_then(|s| s.template.as_ref()),
            "spec.template"
        ),
        ("batch/v1", "Job") => workload!(
            batch::Job,
            PodSource::Job,
            |w| w.spec.as_ref().map(|s| &s.template),
            "spec.template"
        ),
        ("batch/v1", "CronJob") => workload!(
            batch::CronJob,
            PodSource::CronJob,
            |w| w.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()).map(|s| &s.template),
            "spec.jobTemplate.spec.template"
        ),
        _ => {
            let what = if kind.is_empty() {
                "a document without kind".to_string()
            } else {
                format!("{} ({})", describe(&value), if api_version.is_empty() { "no apiVersion" } else { &api_version })
            };
            loaded.notes.push(format!("{origin}: skipped {what}: not a kind Palisade reads"));
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

/// Objects from an already-parsed document (a JSON/YAML value), e.g. a policy embedded in
/// a conformance case. Unknown kinds become notes, as in files.
pub fn load_document(value: Value, origin: &Origin) -> Loaded {
    let mut loaded = Loaded::default();
    load_value(value, origin, &mut loaded);
    loaded
}
