//! Manifests from files, folders (recursively, `*.yaml`, `*.yml`, `*.json`) and stdin:
//! multi-document YAML (Helm's rendered output included), JSON, `kind: List` (`kubectl get
//! -o yaml|json`) and typed lists as the API returns them (`PodList`, `NetworkPolicyList`,
//! `DeploymentList`...: the list kind names the kind of its items, which carry none). Every
//! problem is collected, none stops the others from being reported, and nothing panics.
//!
//! Read as `kubectl apply` reads them: with kubectl's default `--validate=strict`, a key set
//! twice in a mapping is an error (as `sigs.k8s.io/yaml` has it) and so is a field the type
//! does not have (`warn`: one warning per field; `ignore`: silence, the last of duplicate
//! keys winning); a namespaced object without a namespace lands in `default`, and each
//! workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
//! CronJob) stands in as one representative pod named after it, with its template's labels
//! and container ports. Kinds Palisade does not read are skipped with a note saying what
//! they were.

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
use crate::options::{FieldValidation, Options};
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

impl LoadError {
    /// One line per invalid field (as kubectl lists them), each naming file and object.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Invalid { origin, invalid } => invalid
                .errors
                .iter()
                .map(|e| format!("{origin}: {}: {e}", invalid.object))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Everything read from a set of paths.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<(Origin, Object)>,
    /// One line per skipped document (unknown kind).
    pub notes: Vec<String>,
    /// One line per unknown or duplicate field read anyway (`--validate=warn`).
    pub warnings: Vec<String>,
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

/// Loads every path with the default options (the newest Kubernetes, `--validate=strict`).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    load_paths_with(paths, &Options::default())
}

/// Loads every path; `-` reads stdin. Folders are walked recursively in sorted order.
pub fn load_paths_with<P: AsRef<Path>>(paths: &[P], opts: &Options) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let path = path.as_ref();
        if path == Path::new("-") {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => load_str_with(&text, "<stdin>", opts, &mut loaded),
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
                Ok(text) => load_str_with(&text, &name, opts, &mut loaded),
                Err(source) => loaded.errors.push(LoadError::Io { path: name, source }),
            }
        }
    }
    check_duplicates(&mut loaded);
    loaded
}

/// Loads files given as (name, text), e.g. read from a git revision, as [`load_paths_with`]
/// loads files from disk.
pub fn load_texts_with(files: &[(String, String)], opts: &Options) -> Loaded {
    let mut loaded = Loaded::default();
    for (name, text) in files {
        load_str_with(text, name, opts, &mut loaded);
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

/// [`load_str_with`] with the default options.
pub fn load_str(text: &str, file: &str, loaded: &mut Loaded) {
    load_str_with(text, file, &Options::default(), loaded)
}

/// Parses one file's text (YAML stream, JSON value or stream of JSON values) into `loaded`.
pub fn load_str_with(text: &str, file: &str, opts: &Options, loaded: &mut Loaded) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: serde_json reports exact lines. A YAML flow mapping also starts with '{':
        // when the text is not JSON but is YAML, it is read as YAML.
        let (values, syntax) = json_documents(text, opts.fields);
        let Some((e, line, column)) = syntax else {
            for (i, (value, dups)) in values.into_iter().enumerate() {
                let origin = Origin {
                    file: file.into(),
                    document: i + 1,
                };
                duplicate_warnings(&origin, &value, dups, opts, loaded);
                load_value(value, &origin, opts, loaded);
            }
            return;
        };
        if yaml_documents(text, opts.fields).is_err() {
            loaded.errors.push(LoadError::Syntax {
                file: file.into(),
                format: "JSON",
                line,
                column,
                message: one_line(&e.to_string()),
            });
            return;
        }
    }
    let (documents, error) = match yaml_documents(text, opts.fields) {
        Ok(docs) => (docs, None),
        Err((docs, e)) => (docs, Some(e)),
    };
    // The documents before a syntax error are sound; after it the stream cannot be trusted.
    for (i, (value, dups)) in documents.into_iter().enumerate() {
        let origin = Origin {
            file: file.into(),
            document: i + 1,
        };
        duplicate_warnings(&origin, &value, dups, opts, loaded);
        load_value(value, &origin, opts, loaded);
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

type JsonSyntax = (serde_json::Error, usize, usize);

/// Every value of a JSON stream, or those before the first error and the error with its
/// line and column in `text`. The stream is cut into values first (serde_json's stream
/// reader takes no seed), then each is read with duplicate keys handled per `fields`.
fn json_documents(text: &str, fields: FieldValidation) -> (Vec<Document>, Option<JsonSyntax>) {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(item) = stream.next() {
        if let Err(e) = item {
            let (line, column) = (e.line(), e.column());
            return (docs, Some((e, line, column)));
        }
        let end = stream.byte_offset();
        let slice = &text[start..end];
        let dups = std::cell::RefCell::new(Vec::new());
        let mut de = serde_json::Deserializer::from_str(slice);
        match serde::de::DeserializeSeed::deserialize(ValueSeed::new(fields, &dups), &mut de) {
            Ok(value) => docs.push((value, dups.into_inner())),
            Err(e) => {
                // Lines of the slice, counted from the start of the file.
                let before = &text[..start];
                let line = before.matches('\n').count() + e.line();
                let column = if e.line() == 1 {
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + e.column()
                } else {
                    e.column()
                };
                return (docs, Some((e, line, column)));
            }
        }
        start = end;
    }
    (docs, None)
}

/// A document and the paths of the keys it set twice (read anyway, `--validate` not strict).
type Document = (Value, Vec<String>);
type YamlResult = Result<Vec<Document>, (Vec<Document>, serde_yaml_ng::Error)>;

/// Every document of a YAML stream, or those before the first error and the error.
fn yaml_documents(text: &str, fields: FieldValidation) -> YamlResult {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let dups = std::cell::RefCell::new(Vec::new());
        match serde::de::DeserializeSeed::deserialize(ValueSeed::new(fields, &dups), document) {
            Ok(value) => docs.push((value, dups.into_inner())),
            Err(e) => return Err((docs, e)),
        }
    }
    Ok(docs)
}

/// `--validate=warn`: one warning per key set twice.
fn duplicate_warnings(
    origin: &Origin,
    value: &Value,
    dups: Vec<String>,
    opts: &Options,
    loaded: &mut Loaded,
) {
    if opts.fields != FieldValidation::Warn {
        return;
    }
    for field in dups {
        loaded.warnings.push(format!(
            "{origin}: {}: duplicate field {field:?} (the last value is used)",
            describe(value)
        ));
    }
}

/// Objects from an already-parsed document (a JSON/YAML value: an object, a `kind: List`,
/// or null), e.g. a policy embedded in a conformance case, read as [`load_paths`] reads each
/// document of a file: unknown kinds become notes, duplicates errors.
pub fn load_document(value: Value, origin: &Origin) -> Loaded {
    let mut loaded = Loaded::default();
    load_value(value, origin, &Options::default(), &mut loaded);
    check_duplicates(&mut loaded);
    loaded
}

/// Error texts of the parsers may span lines; a report line must not.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a YAML or JSON document as the JSON value `sigs.k8s.io/yaml` makes of it: scalar
/// keys (`1:`, `true:`) become strings, and a key set twice in one mapping is, with
/// `--validate=strict`, an error (`key "x" already set in map`), not a silent overwrite;
/// otherwise the last value wins and the field's path is recorded.
struct ValueSeed<'a> {
    fields: FieldValidation,
    dups: &'a std::cell::RefCell<Vec<String>>,
    path: String,
}

impl<'a> ValueSeed<'a> {
    fn new(fields: FieldValidation, dups: &'a std::cell::RefCell<Vec<String>>) -> Self {
        Self {
            fields,
            dups,
            path: String::new(),
        }
    }

    fn child(&self, path: String) -> Self {
        Self {
            fields: self.fields,
            dups: self.dups,
            path,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
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
        while let Some(v) =
            seq.next_element_seed(self.child(format!("{}[{}]", self.path, items.len())))?
        {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(self.child(self.path.clone()))? {
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
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = map.next_value_seed(self.child(path.clone()))?;
            if out.contains_key(&key) {
                if self.fields == FieldValidation::Strict {
                    return Err(serde::de::Error::custom(format!(
                        "key {key:?} already set in map"
                    )));
                }
                self.dups.borrow_mut().push(path);
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
    opts: &Options,
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
    match opts.fields {
        _ if unknown.is_empty() => Some(typed),
        FieldValidation::Ignore => Some(typed),
        FieldValidation::Warn => {
            for (field, _) in unknown {
                loaded.warnings.push(format!(
                    "{origin}: {object}: unknown field {field:?} (ignored)"
                ));
            }
            Some(typed)
        }
        FieldValidation::Strict => {
            for (field, name) in unknown {
                loaded
                    .errors
                    .push(decode_error(field, format!("unknown field {name:?}")));
            }
            None
        }
    }
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

/// The kinds Palisade reads, by `apiVersion` and `kind`.
const KINDS: [(&str, &str); 10] = [
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "ReplicationController"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
];

/// What a skipped document was, for its note: `Service default/web (v1)`, `a document
/// without kind (keys: metadata, spec)`.
fn what_it_was(value: &Value) -> String {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() {
        let keys: Vec<&str> = match value {
            Value::Object(m) => m.keys().map(String::as_str).take(6).collect(),
            _ => Vec::new(),
        };
        let shape = match value {
            Value::Object(_) if keys.is_empty() => "an empty mapping".to_string(),
            Value::Object(_) => format!("keys: {}", keys.join(", "))
                .escape_debug()
                .to_string(),
            Value::String(_) => "a string".into(),
            Value::Number(_) => "a number".into(),
            Value::Bool(_) => "a boolean".into(),
            _ => "a list".into(),
        };
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        return match name {
            Some(n) => format!(
                "a document without kind named {} ({shape})",
                n.escape_debug()
            ),
            None => format!("a document without kind ({shape})"),
        };
    }
    format!(
        "{} ({})",
        describe(value),
        if api_version.is_empty() {
            "no apiVersion"
        } else {
            api_version
        }
    )
}

/// The items of a list document, each given the item kind (and the list's apiVersion)
/// when it carries none, as the API server leaves them out of typed lists.
fn load_list(
    value: Value,
    list_kind: &str,
    item_kind: Option<&str>,
    origin: &Origin,
    opts: &Options,
    loaded: &mut Loaded,
) {
    let api_version = value.get("apiVersion").cloned();
    let items = match value {
        Value::Object(mut m) => m.remove("items"),
        _ => None,
    };
    match items {
        Some(Value::Array(items)) => {
            for mut item in items {
                if let (Some(kind), Value::Object(m)) = (item_kind, &mut item) {
                    if m.get("kind").is_none_or(Value::is_null) {
                        m.insert("kind".into(), Value::String(kind.into()));
                    }
                    if m.get("apiVersion").is_none_or(Value::is_null)
                        && let Some(v) = &api_version
                    {
                        m.insert("apiVersion".into(), v.clone());
                    }
                }
                if item_kind.is_none() && item.is_object() && item.get("kind").is_none() {
                    loaded.notes.push(format!(
                        "{origin}: skipped an item of a {list_kind}: {}: a List's items must \
                         say their kind",
                        what_it_was(&item)
                    ));
                    continue;
                }
                load_value(item, origin, opts, loaded);
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => loaded.errors.push(LoadError::Decode {
            origin: origin.clone(),
            object: list_kind.into(),
            field: "items".into(),
            message: "must be a list".into(),
        }),
    }
}

fn load_value(value: Value, origin: &Origin, opts: &Options, loaded: &mut Loaded) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    if let Value::Array(items) = value {
        for item in items {
            load_value(item, origin, opts, loaded);
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
    if kind == "List" {
        return load_list(value, &kind, None, origin, opts, loaded);
    }
    if let Some(item) = kind.strip_suffix("List")
        && let Some((_, item)) = KINDS.iter().find(|(v, k)| *k == item && *v == api_version)
    {
        return load_list(value, &kind, Some(item), origin, opts, loaded);
    }
    macro_rules! typed {
        ($ty:ty, $convert:path, $object:path) => {
            if let Some(t) = decode::<$ty>(value, origin, opts, loaded) {
                push($convert(&t, opts).map($object), origin, loaded);
            }
        };
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => typed!(core::Namespace, convert::namespace_with, Object::Namespace),
        ("v1", "Pod") => typed!(core::Pod, convert::pod_with, Object::Pod),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            typed!(
                net::NetworkPolicy,
                convert::network_policy_with,
                Object::NetworkPolicy
            )
        }
        ("apps/v1", "Deployment") => {
            typed!(apps::Deployment, convert::deployment_with, Object::Pod)
        }
        ("apps/v1", "StatefulSet") => {
            typed!(apps::StatefulSet, convert::stateful_set_with, Object::Pod)
        }
        ("apps/v1", "DaemonSet") => typed!(apps::DaemonSet, convert::daemon_set_with, Object::Pod),
        ("apps/v1", "ReplicaSet") => {
            typed!(apps::ReplicaSet, convert::replica_set_with, Object::Pod)
        }
        ("v1", "ReplicationController") => {
            typed!(
                core::ReplicationController,
                convert::replication_controller_with,
                Object::Pod
            )
        }
        ("batch/v1", "Job") => typed!(batch::Job, convert::job_with, Object::Pod),
        ("batch/v1", "CronJob") => typed!(batch::CronJob, convert::cron_job_with, Object::Pod),
        _ => {
            let hint = match KINDS.iter().find(|(_, k)| *k == kind) {
                Some((v, _)) => format!(" (Palisade reads {kind} of apiVersion {v})"),
                None => String::new(),
            };
            let what = if let Some(item) = kind.strip_suffix("List")
                && !item.is_empty()
            {
                let n = value
                    .get("items")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                format!(
                    "a {kind} ({}) of {n} item(s)",
                    if api_version.is_empty() {
                        "no apiVersion"
                    } else {
                        &api_version
                    }
                )
            } else {
                what_it_was(&value)
            };
            loaded.notes.push(format!(
                "{origin}: skipped {what}: not a kind Palisade reads{hint}"
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
