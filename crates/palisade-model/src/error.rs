//! Errors that name the object and the field, in the API server's words.

use std::fmt;

/// Which object an error is about: `NetworkPolicy x/allow-web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names come from files: escaped, so that a report stays on one line.
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        let name = name.escape_debug();
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns.escape_debug(), name),
            None => write!(f, "{} {}", self.kind, name),
        }
    }
}

/// One invalid field: `spec.ingress[0].ports[1].endPort: must be greater than or equal to
/// port (got 79)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// All field errors of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {}", join(.errors))]
pub struct InvalidObject {
    pub object: ObjectRef,
    pub errors: Vec<FieldError>,
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
