//! # palisade-model
//!
//! Owns the objects Palisade reasons about (namespaces, pods, network policies) and their
//! validation. Kubernetes objects come in as `k8s-openapi` types, from files on disk
//! ([`load`]) or from the API (the agent calls [`convert`] directly); what comes out is a
//! small, validated model in which every field the engine needs has exactly one meaning
//! (defaults applied, named ports and CIDRs parsed).
//!
//! Objects the API server already stored (the agent) are not validated again but
//! interpreted as the API server reads them (`convert::stored_*`): what cannot be
//! interpreted is reported, and a policy fails closed.
//!
//! Must not: decide what a policy *means* (that is the engine's job), do network I/O, or
//! let an invalid object through. Every rejection names the object and the field path, as
//! the API server would (`spec.ingress[0].ports[1].endPort`).
//!
//! Start reading at [`types`], then [`convert`] (the API-server validation rules) and
//! [`load`] (files, folders, stdin; YAML, JSON, `kind: List`; workloads as one
//! representative pod).

pub mod convert;
pub mod error;
pub mod labels;
pub mod load;
pub mod options;
pub mod types;
pub mod validate;

pub use error::{FieldError, ObjectRef};
pub use labels::{LabelSelector, Labels, Operator, Requirement};
pub use options::{FieldValidation, KubeVersion, Options};
pub use types::*;
