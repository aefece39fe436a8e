//! `nft list table` in a canonical form: what the kernel enforces, comparable between a
//! table built by updates and one built by a full apply.

use std::collections::BTreeMap;

/// `nft list table` in a form independent of creation order and traffic: top-level objects
/// sorted by header, set and map elements sorted, counter values masked. Rule order inside
/// a chain is kept (it matters).
pub fn canonical_listing(listing: &str) -> String {
    let mut blocks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut elements: Option<String> = None;
    for raw in listing.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(acc) = elements.as_mut() {
            acc.push(' ');
            acc.push_str(line);
            if line.ends_with('}') {
                let text = elements.take().unwrap_or_default();
                push_elements(&mut current, &text);
            }
            continue;
        }
        match &mut current {
            None => {
                if line.starts_with("set ")
                    || line.starts_with("map ")
                    || line.starts_with("chain ")
                {
                    current = Some((line.to_string(), Vec::new()));
                }
                // `table ... {` and the final `}` are skipped.
            }
            Some((_, body)) => {
                if line == "}" {
                    if let Some((header, body)) = current.take() {
                        blocks.insert(header, body);
                    }
                } else if line.starts_with("elements = {") {
                    if line.ends_with('}') {
                        push_elements(&mut current, line);
                    } else {
                        elements = Some(line.to_string());
                    }
                } else {
                    body.push(mask_counters(line));
                }
            }
        }
    }
    let mut out = String::new();
    for (header, body) in blocks {
        out.push_str(&header);
        out.push('\n');
        for line in body {
            out.push_str("    ");
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn push_elements(current: &mut Option<(String, Vec<String>)>, text: &str) {
    let inner = text
        .trim()
        .trim_start_matches("elements = {")
        .trim_end_matches('}');
    let mut items: Vec<String> = inner
        .split(',')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect();
    items.sort();
    if let Some((_, body)) = current.as_mut() {
        for i in items {
            body.push(format!("element {i}"));
        }
    }
}

/// `counter packets 12 bytes 720` -> `counter packets _ bytes _`.
fn mask_counters(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut masked = false;
    for (i, w) in words.iter().enumerate() {
        let after_key = i > 0 && matches!(words[i - 1], "packets" | "bytes");
        if after_key && w.chars().all(|c| c.is_ascii_digit()) {
            out.push("_");
            masked = true;
        } else {
            out.push(w);
        }
    }
    if masked {
        out.join(" ")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_and_counters_do_not_matter() {
        let a = "table inet t {\n\tmap m {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 10.0.0.2 : jump b,\n\t\t\t10.0.0.1 : jump a }\n\t}\n\tchain a {\n\t\tcounter packets 5 bytes 300 accept\n\t}\n}\n";
        let b = "table inet t {\n\tchain a {\n\t\tcounter packets 0 bytes 0 accept\n\t}\n\tmap m {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 10.0.0.1 : jump a, 10.0.0.2 : jump b }\n\t}\n}\n";
        assert_eq!(super::canonical_listing(a), super::canonical_listing(b));
        assert!(super::canonical_listing(a).contains("element 10.0.0.1 : jump a"));
    }
}
