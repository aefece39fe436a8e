//! The API server's syntax rules for names, labels, ports and CIDRs
//! (k8s.io/apimachinery/pkg/util/validation), each returning the reasons a value is
//! invalid, empty when it is valid.

use std::net::IpAddr;

use ipnet::IpNet;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const PORT_NAME_MAX: usize = 15;

fn is_dns1123_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 label: namespace names.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    if !is_dns1123_label_chars(s) {
        errs.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    errs
}

/// RFC 1123 subdomain: names of pods, policies and workloads.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    if s.is_empty() || !s.split('.').all(is_dns1123_label_chars) {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Label keys: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".into());
        } else {
            errs.extend(dns1123_subdomain(prefix).into_iter().map(|e| format!("prefix part {e}")));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!("name part must be no more than {QUALIFIED_NAME_MAX} characters"));
        }
        if !is_qualified_name_part(name) || name.contains('/') {
            errs.push(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
                 start and end with an alphanumeric character"
                    .into(),
            );
        }
    }
    errs
}

/// Label values: empty, or at most 63 characters of the qualified-name alphabet.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !s.is_empty() && !is_qualified_name_part(s) {
        errs.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    errs
}

/// IANA service name (RFC 6335): named ports.
pub fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > PORT_NAME_MAX {
        errs.push(format!("must be no more than {PORT_NAME_MAX} characters"));
    }
    if !s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

pub fn port_number(n: i32) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// A CIDR as the API server accepts it. Host bits may be set (it is "sloppy" for
/// compatibility); the result is the masked network, as Go's `net.ParseCIDR` returns.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)".to_string())?;
    Ok(net.trunc())
}

pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_table() {
        let rows = [
            ("http", true),
            ("serve-80-tcp", true),
            ("h2c", true),
            ("80", false),
            ("HTTP", false),
            ("a--b", false),
            ("-http", false),
            ("http-", false),
            ("abcdefghijklmnop", false),
            ("web_1", false),
        ];
        for (name, ok) in rows {
            assert_eq!(port_name(name).is_empty(), ok, "{name}");
        }
    }

    #[test]
    fn label_keys_and_values_table() {
        for (key, ok) in [
            ("app", true),
            ("app.kubernetes.io/name", true),
            ("kubernetes.io/metadata.name", true),
            ("/x", false),
            ("a/b/c", false),
            ("-app", false),
            ("Example.com/x", false),
            (&"k".repeat(64), false),
        ] {
            assert_eq!(qualified_name(key).is_empty(), ok, "{key}");
        }
        for (value, ok) in [("", true), ("v1.2_x-y", true), ("-x", false), ("a b", false)] {
            assert_eq!(label_value(value).is_empty(), ok, "{value:?}");
        }
    }

    #[test]
    fn names_table() {
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("Kube").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(dns1123_subdomain("allow.web-1").is_empty());
        assert!(!dns1123_subdomain("allow..web").is_empty());
        assert!(!dns1123_subdomain("").is_empty());
    }

    #[test]
    fn cidr_host_bits_are_masked() {
        assert_eq!(parse_cidr("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
        assert!(parse_cidr("10.1.2.3").is_err());
        assert!(parse_cidr("10.1.2.0/33").is_err());
    }
}
