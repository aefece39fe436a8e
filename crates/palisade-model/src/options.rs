//! How manifests are read and validated: which Kubernetes version's rules apply
//! (`--kubernetes-version`) and what happens to unknown and duplicate fields (`--validate`,
//! as kubectl's flag of the same name).

use std::fmt;
use std::str::FromStr;

/// A Kubernetes minor version, `1.NN`, whose default validation rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub minor: u32,
}

impl KubeVersion {
    /// The newest version whose rules are implemented (the API server the tests build).
    pub const NEWEST: KubeVersion = KubeVersion { minor: 37 };
    /// The oldest one accepted (NetworkPolicy `endPort` is GA since 1.25).
    pub const OLDEST: KubeVersion = KubeVersion { minor: 25 };

    /// `StrictIPCIDRValidation` is on by default since 1.36 (beta; alpha and off since
    /// 1.33): CIDRs with host bits set, IPv4 octets or prefix lengths with leading zeros
    /// and IPv4-mapped IPv6 addresses are rejected in ipBlocks and pod IPs.
    pub fn strict_ip_cidr(self) -> bool {
        self.minor >= 36
    }
}

impl Default for KubeVersion {
    fn default() -> Self {
        Self::NEWEST
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

impl FromStr for KubeVersion {
    type Err = String;
    /// `1.35`, `v1.35` or `1.35.2` (the patch level does not change validation).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid Kubernetes version {s:?} (expected 1.NN, e.g. 1.35)");
        let t = s.strip_prefix('v').unwrap_or(s);
        let mut parts = t.split('.');
        let (Some("1"), Some(minor)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        if let Some(patch) = parts.next()
            && (patch.is_empty() || !patch.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        if parts.next().is_some() || minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        let v = KubeVersion { minor };
        if v < Self::OLDEST || v > Self::NEWEST {
            return Err(format!(
                "Kubernetes version {v} is not supported (supported: {} to {})",
                Self::OLDEST,
                Self::NEWEST
            ));
        }
        Ok(v)
    }
}

/// kubectl's `--validate`: what an unknown or duplicate field does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// The object is rejected (kubectl's default).
    #[default]
    Strict,
    /// One warning per field; the object is read (the last of duplicate keys wins).
    Warn,
    /// Silently dropped; the last of duplicate keys wins.
    Ignore,
}

impl FromStr for FieldValidation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            // kubectl still takes the old boolean spellings.
            "strict" | "true" => Ok(FieldValidation::Strict),
            "warn" => Ok(FieldValidation::Warn),
            "ignore" | "false" => Ok(FieldValidation::Ignore),
            _ => Err(format!(
                "invalid --validate value {s:?} (expected strict, warn or ignore)"
            )),
        }
    }
}

/// Everything that changes how manifests are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub version: KubeVersion,
    pub fields: FieldValidation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        for (s, minor) in [("1.35", 35), ("v1.36", 36), ("1.37.2", 37), ("1.25", 25)] {
            assert_eq!(s.parse::<KubeVersion>().unwrap().minor, minor, "{s}");
        }
        for bad in [
            "2.0", "1", "1.", "1.x", "1.24", "1.38", "1.35.", "1.35.1.1", "",
        ] {
            assert!(bad.parse::<KubeVersion>().is_err(), "{bad}");
        }
        assert!(!KubeVersion { minor: 35 }.strict_ip_cidr());
        assert!(KubeVersion::NEWEST.strict_ip_cidr());
    }
}
