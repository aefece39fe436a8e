//! The API server's syntax rules for names, labels, ports, IPs and CIDRs, each returning
//! the reasons a value is invalid (empty when it is valid), worded as upstream words them.
//!
//! Upstream sources (kubernetes/kubernetes):
//! - `staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`: `IsDNS1123Label`,
//!   `IsDNS1123Subdomain`, `IsValidPortNum`, `IsValidPortName`, `RegexError`;
//! - `staging/src/k8s.io/apimachinery/pkg/api/validate/content/kube.go`: `IsLabelKey`
//!   (alias `IsQualifiedName`), `IsLabelValue`;
//! - `staging/src/k8s.io/apimachinery/pkg/api/validation/ip.go`: `IsValidIPForLegacyField`,
//!   `IsValidCIDRForLegacyField`, which with the `StrictIPCIDRValidation` feature gate off
//!   (its default: alpha since 1.33) parse with `k8s.io/utils/net`'s `ParseIPSloppy` and
//!   `ParseCIDRSloppy`, forks of Go's pre-1.17 parser: IPv4 octets may have leading zeros
//!   (read as decimal), a CIDR may have host bits set (they are masked off), the prefix
//!   length may have leading zeros, IPv4-mapped IPv6 forms are accepted. Ported here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_KEY_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const PORT_NAME_MAX: usize = 15;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case \
     alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower \
     case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
     character";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and \
     must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of \
     alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
     character";

/// The message for a CIDR that does not parse (`parseCIDR` in upstream's ip.go).
pub const CIDR_ERR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
/// The message for an IP that does not parse (`parseIP` in upstream's ip.go).
pub const IP_ERR: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// `RegexError` of util/validation: `msg (e.g. 'a', or 'b', regex used for validation is 're')`.
fn regex_error(msg: &str, re: &str, examples: &[&str]) -> String {
    let mut out = msg.to_string();
    if examples.is_empty() {
        out.push_str(&format!(" (regex used for validation is '{re}')"));
        return out;
    }
    out.push_str(" (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{re}')"));
    out
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns1123_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
}

fn is_dns1123_subdomain_chars(s: &str) -> bool {
    s.split('.').all(is_dns1123_label_chars)
}

/// RFC 1123 label (`IsDNS1123Label`): namespace names.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_dns1123_label_chars(s) {
        if is_dns1123_subdomain_chars(s) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// RFC 1123 subdomain (`IsDNS1123Subdomain`): names of pods, policies and workloads.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    subdomain_with_unit(s, "characters")
}

/// `content.IsDNS1123Subdomain` says "bytes" where util's says "characters".
fn subdomain_with_unit(s: &str, unit: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} {unit}"
        ));
    }
    if !is_dns1123_subdomain_chars(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_key_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Label keys (`IsLabelKey`, alias `IsQualifiedName`): `[prefix/]name`, the prefix a DNS
/// subdomain, the name at most 63 bytes.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".into());
            } else {
                errs.extend(
                    subdomain_with_unit(prefix, "bytes")
                        .into_iter()
                        .map(|e| format!("prefix part {e}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')",
                regex_error(
                    LABEL_KEY_ERR,
                    LABEL_KEY_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > LABEL_KEY_NAME_MAX {
        errs.push(format!(
            "name part must be no more than {LABEL_KEY_NAME_MAX} bytes"
        ));
    }
    if !is_label_key_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_ERR,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Label values (`IsLabelValue`): empty, or at most 63 bytes of the label-key alphabet.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(format!("must be no more than {LABEL_VALUE_MAX} bytes"));
    }
    if !s.is_empty() && !is_label_key_name(s) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// IANA service name, RFC 6335 (`IsValidPortName`): named ports. Each rule reports
/// separately, as upstream does.
pub fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > PORT_NAME_MAX {
        errs.push(format!("must be no more than {PORT_NAME_MAX} characters"));
    }
    // `^[-a-z0-9]+$`: the empty string fails too.
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
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

/// `IsValidPortNum`: 1 to 65535.
pub fn port_number(n: i32) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// A CIDR as the API server reads it (`ParseCIDRSloppy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network, host bits masked off, in the family Go's `net.IPNet.Contains` gives it:
    /// an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network (`10.0.0.0/8`).
    pub net: IpNet,
    /// The prefix length as written (104 above); upstream compares these when checking that
    /// an `except` is a strict subset of its `cidr`.
    pub written_prefix_len: u8,
}

/// Parses a CIDR exactly as `ParseCIDRSloppy` does; `None` where upstream reports
/// [`CIDR_ERR`].
pub fn parse_cidr_sloppy(s: &str) -> Option<Cidr> {
    let (addr, mask) = s.split_once('/')?;
    let (bits, ip) = match go::parse_ipv4(addr.as_bytes()) {
        Some(v4) => (32, go::Ip::V4(v4)),
        None => (128, go::Ip::V6(go::parse_ipv6(addr.as_bytes())?)),
    };
    let (n, consumed, ok) = go::dtoi(mask.as_bytes());
    if !ok || consumed != mask.len() || n > bits {
        return None;
    }
    let prefix = n as u8;
    let net = match ip {
        go::Ip::V4(o) => IpNet::V4(Ipv4Net::new(Ipv4Addr::from(o), prefix).ok()?.trunc()),
        go::Ip::V6(o) => {
            let v6 = Ipv6Net::new(Ipv6Addr::from(o), prefix).ok()?.trunc();
            // Masking keeps the ::ffff: marker only when prefix >= 96.
            match v6.network().to_ipv4_mapped() {
                Some(v4) => IpNet::V4(Ipv4Net::new(v4, prefix - 96).ok()?),
                None => IpNet::V6(v6),
            }
        }
    };
    Some(Cidr {
        net,
        written_prefix_len: prefix,
    })
}

/// A CIDR as the API server accepts it: see [`parse_cidr_sloppy`]. The result is the masked
/// network, as Go's `net.ParseCIDR` returns it.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    parse_cidr_sloppy(s)
        .map(|c| c.net)
        .ok_or_else(|| CIDR_ERR.to_string())
}

/// With `StrictIPCIDRValidation`, the reason a CIDR that `ParseCIDRSloppy` accepts is still
/// invalid (`parseCIDR` of upstream's ip.go, checked against `netip.ParsePrefix`): at most
/// one, in upstream's order.
pub fn strict_cidr_error(s: &str) -> Option<&'static str> {
    let (addr, prefix) = s.split_once('/')?;
    let canonical_prefix = prefix == "0" || !prefix.starts_with('0');
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Some("must not have leading 0s in IP or prefix length");
    };
    if !canonical_prefix {
        return Some("must not have leading 0s in IP or prefix length");
    }
    let len: u8 = prefix.parse().ok()?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Some("must not have an IPv4-mapped IPv6 address");
    }
    let masked = IpNet::new(ip, len).ok()?.trunc().addr();
    (masked != ip).then_some("must not have bits set beyond the prefix length")
}

/// With `StrictIPCIDRValidation`, the reasons an IP that `ParseIPSloppy` accepts is still
/// invalid (`parseIP` of upstream's ip.go, checked against `netip.ParseAddr`).
pub fn strict_ip_errors(s: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    match s.parse::<IpAddr>() {
        Err(_) => errs.push("must not have leading 0s"),
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
            errs.push("must not be an IPv4-mapped IPv6 address")
        }
        Ok(_) => {}
    }
    errs
}

/// An IP as the API server accepts it (`ParseIPSloppy`): IPv4 octets may have leading
/// zeros; an IPv4-mapped IPv6 address is its IPv4 address.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let b = s.as_bytes();
    let ip = match b.iter().find(|c| matches!(c, b'.' | b':')) {
        Some(b'.') => go::parse_ipv4(b).map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        Some(_) => go::parse_ipv6(b).map(|o| Ipv6Addr::from(o).to_canonical()),
        None => None,
    };
    ip.ok_or_else(|| IP_ERR.to_string())
}

/// A port of the parser `k8s.io/utils/net` forked from Go 1.16's `net` package.
mod go {
    const BIG: u32 = 0xFF_FFFF;

    pub(super) enum Ip {
        V4([u8; 4]),
        V6([u8; 16]),
    }

    /// Decimal to integer: (number, bytes consumed, ok). Leading zeros are fine.
    pub(super) fn dtoi(s: &[u8]) -> (u32, usize, bool) {
        let mut n: u32 = 0;
        let mut i = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            n = n * 10 + u32::from(s[i] - b'0');
            if n >= BIG {
                return (BIG, i, false);
            }
            i += 1;
        }
        if i == 0 {
            return (0, 0, false);
        }
        (n, i, true)
    }

    /// Hexadecimal to integer: (number, bytes consumed, ok).
    fn xtoi(s: &[u8]) -> (u32, usize, bool) {
        let mut n: u32 = 0;
        let mut i = 0;
        while i < s.len() {
            let Some(d) = (s[i] as char).to_digit(16) else {
                break;
            };
            n = n * 16 + d;
            if n >= BIG {
                return (0, i, false);
            }
            i += 1;
        }
        if i == 0 {
            return (0, i, false);
        }
        (n, i, true)
    }

    pub(super) fn parse_ipv4(mut s: &[u8]) -> Option<[u8; 4]> {
        let mut p = [0u8; 4];
        for (i, octet) in p.iter_mut().enumerate() {
            if s.is_empty() {
                return None;
            }
            if i > 0 {
                if s[0] != b'.' {
                    return None;
                }
                s = &s[1..];
            }
            let (n, c, ok) = dtoi(s);
            if !ok || n > 0xFF {
                return None;
            }
            s = &s[c..];
            *octet = n as u8;
        }
        s.is_empty().then_some(p)
    }

    pub(super) fn parse_ipv6(mut s: &[u8]) -> Option<[u8; 16]> {
        let mut ip = [0u8; 16];
        let mut ellipsis: Option<usize> = None;
        if s.len() >= 2 && s[0] == b':' && s[1] == b':' {
            ellipsis = Some(0);
            s = &s[2..];
            if s.is_empty() {
                return Some(ip);
            }
        }
        let mut i = 0;
        while i < 16 {
            let (n, c, ok) = xtoi(s);
            if !ok || n > 0xFFFF {
                return None;
            }
            // Followed by a dot: a trailing IPv4 address.
            if c < s.len() && s[c] == b'.' {
                if ellipsis.is_none() && i != 12 {
                    return None;
                }
                if i + 4 > 16 {
                    return None;
                }
                let v4 = parse_ipv4(s)?;
                ip[i..i + 4].copy_from_slice(&v4);
                s = &[];
                i += 4;
                break;
            }
            ip[i] = (n >> 8) as u8;
            ip[i + 1] = n as u8;
            i += 2;
            s = &s[c..];
            if s.is_empty() {
                break;
            }
            if s[0] != b':' || s.len() == 1 {
                return None;
            }
            s = &s[1..];
            if s[0] == b':' {
                if ellipsis.is_some() {
                    return None;
                }
                ellipsis = Some(i);
                s = &s[1..];
                if s.is_empty() {
                    break;
                }
            }
        }
        if !s.is_empty() {
            return None;
        }
        if i < 16 {
            let e = ellipsis?;
            let n = 16 - i;
            for j in (e..i).rev() {
                ip[j + n] = ip[j];
            }
            for b in ip.iter_mut().skip(e).take(n) {
                *b = 0;
            }
        } else if ellipsis.is_some() {
            // An ellipsis must stand for at least one zero group.
            return None;
        }
        Some(ip)
    }
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
            ("", false),
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
        // Upstream reports every broken rule, not only the first.
        assert_eq!(port_name("").len(), 2);
        assert_eq!(port_name("-80-").len(), 2);
    }

    #[test]
    fn label_keys_and_values_table() {
        for (key, ok) in [
            ("app", true),
            ("app.kubernetes.io/name", true),
            ("kubernetes.io/metadata.name", true),
            ("A_b.C", true),
            ("/x", false),
            ("x/", false),
            ("a/b/c", false),
            ("-app", false),
            ("Example.com/x", false),
            (&"k".repeat(64), false),
        ] {
            assert_eq!(qualified_name(key).is_empty(), ok, "{key}");
        }
        assert!(qualified_name("a/b/c")[0].starts_with("a valid label key must consist"));
        for (value, ok) in [
            ("", true),
            ("v1.2_x-y", true),
            ("-x", false),
            ("a b", false),
            (&"v".repeat(64), false),
        ] {
            assert_eq!(label_value(value).is_empty(), ok, "{value:?}");
        }
    }

    #[test]
    fn names_table() {
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("Kube").is_empty());
        assert_eq!(
            dns1123_label("a.b"),
            vec!["must not contain dots".to_string()]
        );
        assert!(dns1123_subdomain("allow.web-1").is_empty());
        assert!(!dns1123_subdomain("allow..web").is_empty());
        assert!(!dns1123_subdomain("").is_empty());
        assert!(dns1123_subdomain("Web")[0].contains("regex used for validation is"));
    }

    #[test]
    fn cidrs_parse_as_parse_cidr_sloppy() {
        let net = |s: &str| parse_cidr(s).map(|n| n.to_string());
        // Host bits are masked off.
        assert_eq!(net("10.1.2.3/16").unwrap(), "10.1.0.0/16");
        // Leading zeros: decimal octets, and in the prefix length.
        assert_eq!(net("010.001.0.0/016").unwrap(), "10.1.0.0/16");
        // IPv4-mapped IPv6 is IPv4 for containment.
        assert_eq!(net("::ffff:10.1.0.0/112").unwrap(), "10.1.0.0/16");
        assert_eq!(
            parse_cidr_sloppy("::ffff:10.1.0.0/112")
                .unwrap()
                .written_prefix_len,
            112
        );
        assert_eq!(net("2001:DB8::1/32").unwrap(), "2001:db8::/32");
        assert_eq!(net("::/0").unwrap(), "::/0");
        for bad in [
            "10.1.2.3",
            "10.1.2.0/33",
            "10.1.2.0/+8",
            "10.1.2.0/ 8",
            "10.1.2/8",
            "10.1.2.256/8",
            "2001:db8::/129",
            "fe80::1%eth0/64",
            "1::2::3/64",
            "",
            "/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ips_parse_as_parse_ip_sloppy() {
        assert_eq!(parse_ip("010.0.0.1").unwrap().to_string(), "10.0.0.1");
        assert_eq!(parse_ip("::ffff:10.0.0.1").unwrap().to_string(), "10.0.0.1");
        assert_eq!(parse_ip("fd00::1").unwrap().to_string(), "fd00::1");
        assert_eq!(
            parse_ip("1:2:3:4:5:6:1.2.3.4").unwrap().to_string(),
            "1:2:3:4:5:6:102:304"
        );
        for bad in [
            "10.0.0",
            "10.0.0.1/32",
            "x",
            "",
            "1:2:3:4:5:6:7:8:9",
            "::1::",
            "1.2.3.4:80",
        ] {
            assert!(parse_ip(bad).is_err(), "{bad}");
        }
    }
}
