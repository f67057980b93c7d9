//! Whether a mail's sender is authenticated, from the `Authentication-Results` header (RFC 8601)
//! its receiving server added, for datasets with `require_authenticated_sender = true`.
//!
//! Only the topmost `Authentication-Results` header counts: it is the one the receiving server
//! (Exchange Online for Graph mailboxes) added last. Headers further down travelled with the
//! mail and could have been written by anyone. Exchange Online writes the header without an
//! `authserv-id` (`spf=pass (sender IP is …) smtp.mailfrom=…; dkim=pass …; dmarc=pass …`);
//! both forms are read.
//!
//! A sender passes when the header shows `dmarc=pass` for the From domain, or both `spf=pass`
//! and `dkim=pass` for identities aligned with it (the same domain or a subdomain of it, either
//! way: DMARC's relaxed alignment, without the public-suffix list).

use crate::ports::MessageHeader;

/// One `method=result` of the header with its `ptype.property=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MethodResult {
    method: String,
    result: String,
    properties: Vec<(String, String)>,
}

impl MethodResult {
    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn passed(&self, method: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && self.result.eq_ignore_ascii_case("pass")
    }
}

/// `Ok` when the mail's sender `from` (an address) is authenticated; else why not.
pub fn check(headers: &[MessageHeader], from: &str) -> Result<(), String> {
    let Some(domain) = from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()) else {
        return Err(format!("the sender {from:?} has no domain"));
    };
    let Some(header) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Authentication-Results"))
    else {
        return Err("the mail has no Authentication-Results header".into());
    };
    let results = parse(&header.value);
    let aligned = |identity: Option<&str>| {
        identity.is_some_and(|id| {
            let d = id.rsplit('@').next().unwrap_or(id).to_ascii_lowercase();
            d == domain || d.ends_with(&format!(".{domain}")) || domain.ends_with(&format!(".{d}"))
        })
    };
    let dmarc = results
        .iter()
        .any(|r| r.passed("dmarc") && aligned(r.property("header.from")));
    if dmarc {
        return Ok(());
    }
    let spf = results
        .iter()
        .any(|r| r.passed("spf") && aligned(r.property("smtp.mailfrom")));
    let dkim = results.iter().any(|r| {
        r.passed("dkim") && (aligned(r.property("header.d")) || aligned(r.property("header.i")))
    });
    if spf && dkim {
        return Ok(());
    }
    let shown: Vec<String> = results
        .iter()
        .filter(|r| ["dmarc", "spf", "dkim"].contains(&r.method.to_ascii_lowercase().as_str()))
        .map(|r| format!("{}={}", r.method, r.result))
        .collect();
    Err(format!(
        "Authentication-Results shows no DMARC pass, nor SPF and DKIM pass, for {domain} ({})",
        if shown.is_empty() {
            "no dmarc, spf or dkim result".to_owned()
        } else {
            shown.join(", ")
        }
    ))
}

/// The method results of one header value; comments `( … )` are dropped.
fn parse(value: &str) -> Vec<MethodResult> {
    let text = strip_comments(value);
    let mut out = Vec::new();
    for part in text.split(';') {
        let mut words = part.split_whitespace();
        let Some(first) = words.next() else { continue };
        // The authserv-id (and its version), when there is one, has no `=`.
        let Some((method, result)) = first.split_once('=') else {
            continue;
        };
        let mut properties = Vec::new();
        for w in words {
            if let Some((k, v)) = w.split_once('=')
                && k.contains('.')
            {
                properties.push((k.to_owned(), v.trim_matches('"').to_owned()));
            }
        }
        out.push(MethodResult {
            method: method.trim().to_owned(),
            result: result.trim().to_owned(),
            properties,
        });
    }
    out
}

/// The header without its (possibly nested) comments; quoted strings are kept.
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0u32, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> Vec<MessageHeader> {
        values
            .iter()
            .map(|v| MessageHeader {
                name: "Authentication-Results".into(),
                value: (*v).into(),
            })
            .collect()
    }

    /// As Exchange Online writes it: no authserv-id, comments after each result.
    const EXCHANGE_PASS: &str = "spf=pass (sender IP is 203.0.113.7) smtp.mailfrom=dialer.example; dkim=pass (signature was verified) header.d=dialer.example;dmarc=pass action=none header.from=dialer.example;compauth=pass reason=100";

    #[test]
    fn exchange_online_pass_is_authenticated() {
        assert_eq!(
            check(&headers(&[EXCHANGE_PASS]), "exports@dialer.example"),
            Ok(())
        );
    }

    #[test]
    fn dmarc_pass_alone_suffices_and_an_authserv_id_is_skipped() {
        let h =
            headers(&["mx.contoso.example 1; dmarc=pass (p=reject) header.from=Dialer.Example"]);
        assert_eq!(check(&h, "exports@dialer.example"), Ok(()));
    }

    #[test]
    fn spf_and_dkim_aligned_by_subdomain_pass_without_dmarc() {
        let h = headers(&[
            "mx.contoso.example; spf=pass smtp.mailfrom=bounce@mail.dialer.example; dkim=pass header.i=@dialer.example",
        ]);
        assert_eq!(check(&h, "exports@dialer.example"), Ok(()));
        let spf_only = headers(&["mx.contoso.example; spf=pass smtp.mailfrom=dialer.example"]);
        let err = check(&spf_only, "exports@dialer.example").unwrap_err();
        assert!(err.contains("spf=pass"), "{err}");
    }

    #[test]
    fn a_pass_for_another_domain_or_a_fail_is_refused_with_the_results() {
        let other = headers(&["dmarc=pass header.from=attacker.example"]);
        let err = check(&other, "exports@dialer.example").unwrap_err();
        assert!(
            err.contains("dialer.example") && err.contains("dmarc=pass"),
            "{err}"
        );
        let fail = headers(&[
            "spf=fail smtp.mailfrom=dialer.example; dkim=none; dmarc=fail action=quarantine header.from=dialer.example",
        ]);
        let err = check(&fail, "exports@dialer.example").unwrap_err();
        assert!(err.contains("dmarc=fail"), "{err}");
        // "notdialer.example" is not a subdomain of "dialer.example".
        let lookalike = headers(&["dmarc=pass header.from=notdialer.example"]);
        assert!(check(&lookalike, "exports@dialer.example").is_err());
    }

    #[test]
    fn only_the_topmost_header_counts() {
        // A forged pass further down (written by the sender) does not help.
        let h = headers(&[
            "dmarc=fail header.from=dialer.example",
            "dmarc=pass header.from=dialer.example",
        ]);
        assert!(check(&h, "exports@dialer.example").is_err());
    }

    #[test]
    fn no_header_or_no_domain_is_refused() {
        let err = check(&[], "exports@dialer.example").unwrap_err();
        assert!(err.contains("no Authentication-Results"), "{err}");
        assert!(check(&headers(&[EXCHANGE_PASS]), "nobody").is_err());
    }

    #[test]
    fn a_pass_inside_a_comment_is_not_a_result() {
        let h = headers(&[
            "spf=none (dmarc=pass header.from=dialer.example) smtp.mailfrom=dialer.example",
        ]);
        assert!(check(&h, "exports@dialer.example").is_err());
    }
}
