//! Where things go in the bucket: one function per kind of object.
//!
//! - `raw/{dataset}/{received day}/{message id}/{file}`: an attachment as received, with
//!   `.rejects.json` beside it when rows were rejected;
//! - `quarantine/…/{file}` + `.reason.json`: an unusable attachment and why;
//! - `reports/{report}/{period}/{report}-{period}.xlsx`: a run's workbook (versioned);
//! - `config/reports.toml`: the definitions the functions run on.

/// The place of an attachment under `raw/` and `quarantine/`.
pub fn attachment_place(dataset: &str, received_day: &str, message_id: &str, file: &str) -> String {
    format!(
        "{dataset}/{received_day}/{}/{}",
        key_segment(message_id),
        file_segment(file)
    )
}

/// A file name as one key segment that no other name maps to: a name the segment had to
/// change (`a b.csv` → `a_b.csv`) takes a short hash of the original (`a_b.csv~3f2a…`), so
/// it never overwrites `a_b.csv` itself.
pub fn file_segment(file: &str) -> String {
    use sha2::Digest;
    let segment = key_segment(file);
    if segment == file {
        return segment;
    }
    let hash = hex::encode(sha2::Sha256::digest(file.as_bytes()));
    format!("{segment}~{}", &hash[..12])
}

pub fn raw(place: &str) -> String {
    format!("raw/{place}")
}

pub fn quarantine(place: &str) -> String {
    format!("quarantine/{place}")
}

/// Where a relay uploads one raw mail: named by the SHA-256 of its bytes.
pub fn relay_inbox(relay: &str, sha256: &str) -> String {
    format!("{RELAY_INBOX}{relay}/{sha256}.eml")
}

pub const RELAY_INBOX: &str = "inbox/relay/";

/// The content type a relay's upload is stored (and its presigned upload signed) with.
pub const RELAY_CONTENT_TYPE: &str = "message/rfc822";

/// The (relay, SHA-256) of a relay upload's key, when it is one.
pub fn relay_upload(key: &str) -> Option<(&str, &str)> {
    let (relay, file) = key.strip_prefix(RELAY_INBOX)?.split_once('/')?;
    let sha = file.strip_suffix(".eml")?;
    (crate::ids::RelayId::parse(relay).is_ok()
        && sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some((relay, sha))
}

/// A raw mail that could not be read at all, kept whole with its `.reason.json`.
pub fn quarantined_mail(relay: &str, sha256: &str) -> String {
    format!("quarantine/mail/relay/{relay}/{sha256}.eml")
}

pub fn workbook(report: &str, period: &str) -> String {
    format!("reports/{report}/{period}/{report}-{period}.xlsx")
}

/// A string made safe as one S3 key segment (Graph ids hold `=`, `/`, `+`).
pub fn key_segment(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_segments_keep_no_slashes() {
        assert_eq!(super::key_segment("AAMk/a+b=="), "AAMk_a_b==");
        let spaced = super::attachment_place("ib_calls", "2024-03-14", "AAMk/a", "x y.csv");
        assert!(
            spaced.starts_with("ib_calls/2024-03-14/AAMk_a/x_y.csv~"),
            "{spaced}"
        );
        let plain = super::attachment_place("ib_calls", "2024-03-14", "AAMk/a", "x_y.csv");
        assert_eq!(plain, "ib_calls/2024-03-14/AAMk_a/x_y.csv");
        let other = super::attachment_place("ib_calls", "2024-03-14", "AAMk/a", "x+y.csv");
        assert!(other != spaced && other != plain);
    }
}
