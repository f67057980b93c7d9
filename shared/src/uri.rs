//! Percent-encoding of URL parts and form bodies, written once (with the `percent-encoding`
//! and `form_urlencoded` crates): the API and the dashboard decode paths and forms with it,
//! the dashboard and the CLI build paths with it, the Graph and S3 adapters escape ids and keys.

use std::collections::HashMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// RFC 3986's unreserved characters stay; everything else is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Graph ids end in base64 padding, which Graph expects as it is.
const GRAPH_ID: &AsciiSet = &SEGMENT.remove(b'=');

/// An S3 key in `x-amz-copy-source`: its `/`s are the key's own.
const S3_KEY: &AsciiSet = &SEGMENT.remove(b'/');

/// One path segment (an id, a name) with everything but the unreserved characters escaped.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A Graph id as one path segment (`=` kept).
pub fn graph_id(s: &str) -> String {
    utf8_percent_encode(s, GRAPH_ID).to_string()
}

/// An S3 key as CopyObject's `x-amz-copy-source` wants it (`/` kept).
pub fn s3_key(s: &str) -> String {
    utf8_percent_encode(s, S3_KEY).to_string()
}

/// A path segment as sent, decoded (`%XX` to its byte; bytes that are not UTF-8 replaced).
pub fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// An `application/x-www-form-urlencoded` body: its fields (`+` a space, `%XX` decoded; of a
/// field given twice, the last).
pub fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_keeps_only_the_unreserved_characters() {
        assert_eq!(segment("r-1_a.b~c"), "r-1_a.b~c");
        assert_eq!(segment("a/b c?#%é"), "a%2Fb%20c%3F%23%25%C3%A9");
        assert_eq!(graph_id("AAMk/a+b=="), "AAMk%2Fa%2Bb==");
        assert_eq!(
            s3_key("raw/ib calls/a#1~b.csv"),
            "raw/ib%20calls/a%231~b.csv"
        );
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        for s in ["", "plain", "a/b c?#%é", "100%", "%zz", "日本"] {
            assert_eq!(decode(&segment(s)), s);
        }
        // Broken escapes are kept as they are; bytes that are not UTF-8 are replaced.
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn a_form_body_is_read_as_browsers_send_it() {
        let f = form(b"key=chk_a%2Bb+c&_csrf=x&empty=&flag&key2=%E2%9C%93");
        assert_eq!(f["key"], "chk_a+b c");
        assert_eq!(f["_csrf"], "x");
        assert_eq!(f["empty"], "");
        assert_eq!(f["flag"], "");
        assert_eq!(f["key2"], "✓");
        assert_eq!(form(b"a=1&a=2")["a"], "2");
        assert!(form(b"").is_empty());
    }
}
