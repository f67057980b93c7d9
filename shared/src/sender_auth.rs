//! Whether a mail's sender is authenticated, from the `Authentication-Results` header (RFC 8601)
//! its receiving server added, for datasets with `require_authenticated_sender = true`.
//!
//! Only the topmost `Authentication-Results` header counts: it is the one the receiving server
//! (Exchange Online for Graph mailboxes) added last. Headers further down travelled with the
//! mail and could have been written by anyone. Exchange Online writes the header without an
//! `authserv-id` (`spf=pass (sender IP is …) smtp.mailfrom=…; dkim=pass …; dmarc=pass …`);
//! both forms are read.
//!
//! Mail a relay uploaded (drop folder, IMAP, Outlook) never went through Exchange Online here:
//! its topmost header is whatever the file holds, so a sender could write its own `dmarc=pass`.
//! For such mail only headers whose authserv-id is one the relay's record trusts (its own
//! Exchange or MTA, `charlie relay create --trust-authserv-id`) are read, the topmost of them;
//! with none trusted, relay mail counts as unauthenticated. (The trusted server must remove
//! headers claiming its authserv-id from arriving mail, as RFC 8601 §5 asks and Exchange, Postfix
//! with OpenDMARC and rspamd do.)
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

/// Which `Authentication-Results` header a mail's path lets us believe.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The topmost: the receiving server's (Exchange Online, for mail read through Graph).
    ReceivingServer,
    /// The topmost of those whose authserv-id is one of these (mail a relay uploaded); none
    /// named: no header is believed.
    AuthservIds(&'a [String]),
}

/// The authserv-id a header value starts with, if it has one (Exchange Online writes none: its
/// first part is already a `method=result`).
pub fn authserv_id(value: &str) -> Option<String> {
    let text = strip_comments(value);
    let first = text.split(';').next()?.split_whitespace().next()?;
    (!first.contains('=')).then(|| first.to_ascii_lowercase())
}

/// `Ok` when the mail's sender `from` (an address) is authenticated by the header `trust`
/// names; else why not.
pub fn check(headers: &[MessageHeader], from: &str, trust: Trust<'_>) -> Result<(), String> {
    let Some(domain) = from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()) else {
        return Err(format!("the sender {from:?} has no domain"));
    };
    let mut results = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Authentication-Results"));
    let header = match trust {
        Trust::ReceivingServer => results.next(),
        Trust::AuthservIds([]) => {
            return Err(
                "relay mail: its relay trusts no authserv-id (charlie relay create --trust-authserv-id), so no Authentication-Results of it can be believed"
                    .into(),
            );
        }
        Trust::AuthservIds(trusted) => results.find(|h| {
            authserv_id(&h.value)
                .is_some_and(|id| trusted.iter().any(|t| t.eq_ignore_ascii_case(&id)))
        }),
    };
    let Some(header) = header else {
        return Err(match trust {
            Trust::AuthservIds(trusted) => format!(
                "the mail has no Authentication-Results header from {} (the authserv-id(s) its relay trusts)",
                trusted.join(", ")
            ),
            Trust::ReceivingServer => "the mail has no Authentication-Results header".into(),
        });
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

    const TOP: Trust<'static> = Trust::ReceivingServer;

    /// As Exchange Online writes it: no authserv-id, comments after each result.
    const EXCHANGE_PASS: &str = "spf=pass (sender IP is 203.0.113.7) smtp.mailfrom=dialer.example; dkim=pass (signature was verified) header.d=dialer.example;dmarc=pass action=none header.from=dialer.example;compauth=pass reason=100";

    #[test]
    fn exchange_online_pass_is_authenticated() {
        assert_eq!(
            check(&headers(&[EXCHANGE_PASS]), "exports@dialer.example", TOP),
            Ok(())
        );
    }

    #[test]
    fn dmarc_pass_alone_suffices_and_an_authserv_id_is_skipped() {
        let h =
            headers(&["mx.contoso.example 1; dmarc=pass (p=reject) header.from=Dialer.Example"]);
        assert_eq!(check(&h, "exports@dialer.example", TOP), Ok(()));
    }

    #[test]
    fn spf_and_dkim_aligned_by_subdomain_pass_without_dmarc() {
        let h = headers(&[
            "mx.contoso.example; spf=pass smtp.mailfrom=bounce@mail.dialer.example; dkim=pass header.i=@dialer.example",
        ]);
        assert_eq!(check(&h, "exports@dialer.example", TOP), Ok(()));
        let spf_only = headers(&["mx.contoso.example; spf=pass smtp.mailfrom=dialer.example"]);
        let err = check(&spf_only, "exports@dialer.example", TOP).unwrap_err();
        assert!(err.contains("spf=pass"), "{err}");
    }

    #[test]
    fn a_pass_for_another_domain_or_a_fail_is_refused_with_the_results() {
        let other = headers(&["dmarc=pass header.from=attacker.example"]);
        let err = check(&other, "exports@dialer.example", TOP).unwrap_err();
        assert!(
            err.contains("dialer.example") && err.contains("dmarc=pass"),
            "{err}"
        );
        let fail = headers(&[
            "spf=fail smtp.mailfrom=dialer.example; dkim=none; dmarc=fail action=quarantine header.from=dialer.example",
        ]);
        let err = check(&fail, "exports@dialer.example", TOP).unwrap_err();
        assert!(err.contains("dmarc=fail"), "{err}");
        // "notdialer.example" is not a subdomain of "dialer.example".
        let lookalike = headers(&["dmarc=pass header.from=notdialer.example"]);
        assert!(check(&lookalike, "exports@dialer.example", TOP).is_err());
    }

    #[test]
    fn only_the_topmost_header_counts() {
        // A forged pass further down (written by the sender) does not help.
        let h = headers(&[
            "dmarc=fail header.from=dialer.example",
            "dmarc=pass header.from=dialer.example",
        ]);
        assert!(check(&h, "exports@dialer.example", TOP).is_err());
    }

    #[test]
    fn no_header_or_no_domain_is_refused() {
        let err = check(&[], "exports@dialer.example", TOP).unwrap_err();
        assert!(err.contains("no Authentication-Results"), "{err}");
        assert!(check(&headers(&[EXCHANGE_PASS]), "nobody", TOP).is_err());
    }

    #[test]
    fn a_pass_inside_a_comment_is_not_a_result() {
        let h = headers(&[
            "spf=none (dmarc=pass header.from=dialer.example) smtp.mailfrom=dialer.example",
        ]);
        assert!(check(&h, "exports@dialer.example", TOP).is_err());
    }

    /// Relay mail: only a header from an authserv-id the relay trusts counts (the topmost of
    /// them); a sender-written pass on top, or one claiming another server, is ignored; with no
    /// authserv-id trusted, nothing counts.
    #[test]
    fn relay_mail_believes_only_its_trusted_authserv_ids() {
        let trusted = ["mx.branch.example".to_owned()];
        let relay = Trust::AuthservIds(&trusted);
        let forged_on_top = headers(&[
            "dmarc=pass header.from=dialer.example",
            "attacker.example; dmarc=pass header.from=dialer.example",
            "MX.Branch.Example 1; spf=fail smtp.mailfrom=dialer.example; dmarc=fail header.from=dialer.example",
        ]);
        let err = check(&forged_on_top, "exports@dialer.example", relay).unwrap_err();
        assert!(err.contains("dmarc=fail"), "{err}");
        let genuine = headers(&[
            "dmarc=pass header.from=dialer.example",
            "mx.branch.example; dmarc=pass (p=reject) header.from=dialer.example",
        ]);
        assert_eq!(check(&genuine, "exports@dialer.example", relay), Ok(()));
        let err = check(
            &headers(&["dmarc=pass header.from=dialer.example"]),
            "exports@dialer.example",
            relay,
        )
        .unwrap_err();
        assert!(err.contains("mx.branch.example"), "{err}");
        let err = check(&genuine, "exports@dialer.example", Trust::AuthservIds(&[])).unwrap_err();
        assert!(err.contains("trusts no authserv-id"), "{err}");
        assert_eq!(
            authserv_id("mx.branch.example 1; dmarc=pass"),
            Some("mx.branch.example".into())
        );
        assert_eq!(
            authserv_id("(comment) mx.b.example; none"),
            Some("mx.b.example".into())
        );
        assert_eq!(authserv_id(EXCHANGE_PASS), None);
    }
}
