//! The corpus in `events/relay/` (written by its `make_corpus.py`): every good file gives
//! exactly the rows of the plain CSV; every bad one is refused with its reason.

use super::*;
use crate::csv_ingest::{KeyedRow, Origin, parse_attachment};
use crate::definitions::Definitions;

const CSV: &[u8] = include_bytes!("../../../events/relay/ib_calls_2024-03-14_sample.csv");

fn corpus(name: &str) -> Vec<u8> {
    let path = format!("{}/../events/relay/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn uploaded() -> DateTime<Utc> {
    "2024-03-14T13:00:00Z".parse().unwrap()
}

/// The rows a file gives for `ib_calls`, and how many of its rows it refused.
fn rows(bytes: &[u8], name: &str) -> (Vec<KeyedRow>, u64) {
    let defs = Definitions::parse(include_str!("../../../reports.toml")).unwrap();
    let parsed = parse_attachment(&defs.datasets["ib_calls"], bytes, &Origin::named(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (parsed.rows, parsed.rows_rejected)
}

/// The corpus files that must read, each with the name its CSV attachment has.
const GOOD: &[(&str, &str)] = &[
    ("plain.eml", "ib_calls_2024-03-14_morning.csv"),
    ("octet-stream.eml", "ib_calls_2024-03-14_morning.csv"),
    ("vnd-ms-excel-inline.eml", "ib_calls_2024-03-14_morning.csv"),
    (
        "rfc2231-continuations.eml",
        "ib_calls_2024-03-14_morning_Zürich.csv",
    ),
    ("rfc2047-name.eml", "ib_calls_2024-03-14_Zürich.csv"),
    ("quoted-printable.eml", "ib_calls_2024-03-14_morning.csv"),
    ("8bit.eml", "ib_calls_2024-03-14_morning.csv"),
    ("single-part.eml", "ib_calls_2024-03-14_morning.csv"),
    ("forwarded-rfc822.eml", "ib_calls_2024-03-14_morning.csv"),
    ("smime-signed.eml", "ib_calls_2024-03-14_morning.csv"),
    (
        "alternative-and-two-files.eml",
        "ib_calls_2024-03-14_morning.csv",
    ),
];

#[test]
fn every_good_file_of_the_corpus_gives_the_rows_of_the_plain_csv() {
    let (expected, rejected) = rows(CSV, "ib_calls_2024-03-14_morning.csv");
    // The sample keeps the export's one malformed row: refused alike everywhere.
    assert_eq!((expected.len(), rejected), (23, 1));
    let defs = Definitions::parse(include_str!("../../../reports.toml")).unwrap();
    let ib_calls = &defs.datasets["ib_calls"];
    for (file, name) in GOOD {
        let mail = parse(&corpus(file), uploaded()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(mail.unreadable.is_empty(), "{file}: {:?}", mail.unreadable);
        let csvs: Vec<_> = mail
            .attachments
            .iter()
            .filter(|(info, _)| {
                ib_calls.matches(
                    mail.message.sender(),
                    mail.message.subject.as_deref().unwrap_or(""),
                    &info.name,
                )
            })
            .collect();
        assert_eq!(
            csvs.len(),
            1,
            "{file}: {:?}",
            mail.attachments.iter().map(|a| &a.0).collect::<Vec<_>>()
        );
        let (info, bytes) = csvs[0];
        assert_eq!(info.name, *name, "{file}");
        assert_eq!(info.size, bytes.len() as u64, "{file}");
        let (got, got_rejected) = rows(bytes, name);
        assert_eq!(
            (got.len(), got_rejected),
            (expected.len(), rejected),
            "{file}"
        );
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (&g.key, g.date, &g.values),
                (&e.key, e.date, &e.values),
                "{file}"
            );
        }
    }
}

#[test]
fn the_plain_file_keeps_the_csv_byte_for_byte_and_the_headers_graph_would_give() {
    let mail = parse(&corpus("plain.eml"), uploaded()).unwrap();
    assert_eq!(mail.attachments.len(), 1);
    let (info, bytes) = &mail.attachments[0];
    assert_eq!(bytes.as_slice(), CSV);
    assert_eq!(info.content_type, "text/csv");
    let m = &mail.message;
    assert_eq!(m.id, content_id(&corpus("plain.eml")));
    assert_eq!(m.id.len(), 64);
    assert_eq!(m.sender(), "exports@dialer.example");
    assert_eq!(
        m.subject.as_deref(),
        Some("IB calls export 2024-03-14 (00:00-12:00)")
    );
    assert_eq!(
        m.internet_message_id.as_deref(),
        Some("<plain@dialer.example>")
    );
    // The receiving server's time (the newest Received:), not the sender's Date:.
    assert_eq!(m.received, Some("2024-03-14T12:05:13Z".parse().unwrap()));
    assert!(
        m.headers
            .iter()
            .any(|h| h.name == "Received" && h.value.contains("with ESMTPS id 4Tw9;"))
    );
}

#[test]
fn the_8bit_and_quoted_printable_files_keep_their_bytes_without_a_charset_applied() {
    // No UTF-8 replacement characters, the BOM kept: the dataset's encoding decides.
    for file in ["8bit.eml", "quoted-printable.eml"] {
        let mail = parse(&corpus(file), uploaded()).unwrap();
        let bytes = &mail.attachments[0].1;
        assert!(bytes.starts_with(b"\xEF\xBB\xBFcall_id,"), "{file}");
        assert!(
            !String::from_utf8_lossy(bytes).contains('\u{FFFD}'),
            "{file}"
        );
    }
    // A Windows-1252 CSV in a text/csv part that claims nothing: the bytes stay 1252.
    let mail = b"From: a@b.example\nSubject: s\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/csv; name=f.csv\nContent-Transfer-Encoding: 8bit\n\nname\nJos\xE9\n--x--\n";
    let parsed = parse(mail, uploaded()).unwrap();
    assert_eq!(parsed.attachments[0].1, b"name\nJos\xE9");
}

#[test]
fn the_other_attachments_of_a_mail_are_listed_and_the_signature_is_not() {
    let mail = parse(&corpus("alternative-and-two-files.eml"), uploaded()).unwrap();
    let names: Vec<_> = mail.attachments.iter().map(|a| a.0.name.as_str()).collect();
    assert_eq!(names, ["logo.png", "ib_calls_2024-03-14_morning.csv"]);
    let ids: Vec<_> = mail.attachments.iter().map(|a| a.0.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let signed = parse(&corpus("smime-signed.eml"), uploaded()).unwrap();
    assert!(signed.attachments.iter().all(|a| a.0.name != "smime.p7s"));
}

#[test]
fn a_nameless_part_gets_a_name_from_its_type() {
    let mail = b"From: a@b.example\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nbody\n--x\nContent-Type: text/csv\n\na,b\n--x\nContent-Type: text/plain\nContent-Disposition: attachment\n\nnote\n--x--\n";
    let parsed = parse(mail, uploaded()).unwrap();
    let names: Vec<_> = parsed
        .attachments
        .iter()
        .map(|a| a.0.name.as_str())
        .collect();
    assert_eq!(names, ["attachment-3.csv", "attachment-4.txt"]);
}

#[test]
fn tnef_and_encrypted_parts_are_unreadable_with_why() {
    let mail = parse(&corpus("bad-tnef-winmail.eml"), uploaded()).unwrap();
    assert!(mail.attachments.is_empty());
    assert_eq!(mail.unreadable.len(), 1);
    assert!(
        mail.unreadable[0].contains("winmail.dat is TNEF"),
        "{:?}",
        mail.unreadable
    );
    let encrypted = b"From: a@b.example\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\nContent-Transfer-Encoding: base64\n\nMIIB\n";
    let mail = parse(encrypted, uploaded()).unwrap();
    assert!(
        mail.unreadable[0].contains("S/MIME"),
        "{:?}",
        mail.unreadable
    );
}

#[test]
fn a_cut_short_file_and_a_file_that_is_no_mail_are_unusable_with_why() {
    let err = parse(&corpus("bad-truncated.eml"), uploaded()).unwrap_err();
    assert!(matches!(err, Unusable::Truncated(_)), "{err}");
    assert!(err.to_string().contains("cut short"), "{err}");
    let err = parse(&corpus("bad-not-mail.eml"), uploaded()).unwrap_err();
    assert!(matches!(err, Unusable::NotMail(_)), "{err}");
    assert!(err.to_string().contains("no From header"), "{err}");
    assert!(matches!(parse(b"", uploaded()), Err(Unusable::NotMail(_))));
    // Base64 cut inside a single-part mail: no boundary to miss, but an impossible length.
    let single = corpus("single-part.eml");
    let cut = &single[..single.len() - 7];
    let err = parse(cut, uploaded()).unwrap_err();
    assert!(err.to_string().contains("not a multiple of 4"), "{err}");
}

#[test]
fn a_mail_without_received_or_date_headers_is_dated_by_its_upload() {
    let parsed = parse(b"From: a@b.example\n\nhello\n", uploaded()).unwrap();
    assert_eq!(parsed.message.received, Some(uploaded()));
    assert_eq!(parsed.message.internet_message_id, None);
}
