//! The control plane's key material, generated fresh for every [`crate::ControlPlane`].
//!
//! rcgen (pure Rust, on the `ring` the TLS stack already uses) rather than the `openssl`
//! command: no tool to find on the machine, no config files, and the certificates are exactly
//! what is written here. ECDSA P-256 everywhere: rcgen generates it without extra
//! dependencies, Go's TLS and rustls both accept it, and kube-apiserver signs service-account
//! tokens with it (ES256) as readily as with RSA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Context, Error, Result};

/// Paths of the files [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signed the serving certificate: clients trust this.
    pub ca_cert: PathBuf,
    /// The API server's serving certificate (SANs 127.0.0.1, localhost) and its key.
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// The key the API server signs service-account tokens with, and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn rc(e: rcgen::Error) -> Error {
    Error::other(format!("generating certificates: {e}"))
}

/// Generates a CA, a serving certificate for 127.0.0.1/localhost signed by it, and a
/// service-account key pair, into `dir`.
pub fn generate(dir: &Path) -> Result<Pki> {
    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "palisade-kubetest-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().map_err(rc)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(rc)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = params.signed_by(&serving_key, &issuer).map_err(rc)?;

    let sa_key = KeyPair::generate().map_err(rc)?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    let files = [
        (&pki.ca_cert, ca_cert.pem()),
        (&pki.serving_cert, serving_cert.pem()),
        (&pki.serving_key, serving_key.serialize_pem()),
        (&pki.sa_key, sa_key.serialize_pem()),
        (&pki.sa_pub, sa_key.public_key_pem()),
    ];
    for (path, pem) in files {
        std::fs::write(path, pem).ctx(format!("writing {}", path.display()))?;
    }
    Ok(pki)
}
