//! The edge in front of the HTTP API. On AWS (`infra/envs/aws`) a CloudFront distribution with
//! the WAF web ACL (rate rules on the unauthenticated routes) forwards every request to API
//! Gateway and adds [`ORIGIN_HEADER`], holding a secret only it and the functions know. The
//! webhook and the API refuse a request without it, so nobody goes round the WAF by calling the
//! `execute-api` endpoint directly. The SigV4 routes (`/iam/v1`) are exempt: AWS checks those
//! callers before the function runs, and a signature covers the host it was made for.
//!
//! The secret holds one value or several (separated by commas or whitespace), so it can be
//! rotated without a refusal: add the new value, point CloudFront at it, drop the old one.

use aws_lambda_events::http::HeaderMap;

use crate::secret::Secret;

/// The header CloudFront adds to each request it forwards (lower case, as API Gateway passes
/// header names).
pub const ORIGIN_HEADER: &str = "x-charlie-origin";

/// The shortest accepted value: a guessable header would make the check decoration.
pub const MIN_ORIGIN_SECRET_CHARS: usize = 32;

/// What the functions behind the edge know of it; the default (no edge) checks nothing.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    origin: Vec<Secret>,
    /// The host people reach the API at (the distribution's), beside the request's own `Host`
    /// (API Gateway's, behind CloudFront): a dashboard sign-in posted from it is same-origin.
    public_host: Option<String>,
}

impl Edge {
    /// From the origin secret's value (`None`: no edge in front, nothing checked) and the
    /// public base URL (`CHARLIE_API_BASE_URL`).
    pub fn new(origin_secret: Option<&Secret>, public_url: Option<&str>) -> Result<Self, String> {
        let origin = match origin_secret {
            None => Vec::new(),
            Some(s) => {
                let values: Vec<Secret> = s
                    .expose()
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|v| !v.is_empty())
                    .map(Secret::new)
                    .collect();
                if values.is_empty() {
                    return Err("the origin secret is empty".into());
                }
                if let Some(short) = values
                    .iter()
                    .position(|v| v.expose().chars().count() < MIN_ORIGIN_SECRET_CHARS)
                {
                    return Err(format!(
                        "value {} of the origin secret is shorter than {MIN_ORIGIN_SECRET_CHARS} characters",
                        short + 1
                    ));
                }
                values
            }
        };
        let public_host = match public_url {
            None => None,
            Some(u) => {
                // scheme://host[:port][/path]: the authority, without user info.
                let host = u
                    .split_once("://")
                    .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
                    .map(|a| a.rsplit('@').next().unwrap_or(a))
                    .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
                    .ok_or_else(|| format!("the public base URL {u:?} has no host"))?;
                Some(host.to_owned())
            }
        };
        Ok(Edge {
            origin,
            public_host,
        })
    }

    /// Whether a request may be served: no edge configured, or it carries one of the origin
    /// values (compared in constant time).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        if self.origin.is_empty() {
            return true;
        }
        let Some(presented) = headers.get(ORIGIN_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        // Every value is compared, so the time taken does not say which one was close.
        self.origin
            .iter()
            .fold(false, |ok, v| v.matches(presented) | ok)
    }

    /// Whether `host` (an `Origin` header's host) is the public host people use.
    pub fn is_public_host(&self, host: &str) -> bool {
        self.public_host
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::http::HeaderValue;

    const VALUE: &str = "0123456789abcdef0123456789abcdef-origin";
    const NEXT: &str = "fedcba9876543210fedcba9876543210-origin";

    fn with(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(ORIGIN_HEADER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn without_an_edge_everything_is_admitted() {
        assert!(Edge::default().admits(&with(None)));
    }

    #[test]
    fn behind_the_edge_only_requests_with_a_current_value_are_admitted() {
        let edge = Edge::new(Some(&Secret::new(format!("{VALUE},\n {NEXT}"))), None).unwrap();
        assert!(edge.admits(&with(Some(VALUE))));
        assert!(edge.admits(&with(Some(NEXT))));
        assert!(!edge.admits(&with(None)));
        assert!(!edge.admits(&with(Some(""))));
        assert!(!edge.admits(&with(Some(&VALUE[..31]))));
        assert!(!edge.admits(&with(Some(&format!("{VALUE}x")))));
    }

    #[test]
    fn a_short_or_empty_origin_secret_is_refused_at_cold_start() {
        let e = Edge::new(Some(&Secret::new("tiny-value")), None).unwrap_err();
        assert!(e.contains("value 1") && e.contains("32"), "{e}");
        assert!(
            !e.contains("tiny-value"),
            "the value itself is not shown: {e}"
        );
        assert!(Edge::new(Some(&Secret::new(" , ")), None).is_err());
    }

    #[test]
    fn the_public_host_comes_from_the_base_url() {
        let edge = Edge::new(None, Some("https://d111111abcdef8.cloudfront.net/")).unwrap();
        assert!(edge.is_public_host("D111111ABCDEF8.cloudfront.net"));
        assert!(!edge.is_public_host("abc.execute-api.eu-west-2.amazonaws.com"));
        let local = Edge::new(None, Some("http://127.0.0.1:8080")).unwrap();
        assert!(local.is_public_host("127.0.0.1:8080"));
        assert!(Edge::new(None, Some("not a url")).is_err());
        assert!(!Edge::default().is_public_host("anything"));
    }
}
