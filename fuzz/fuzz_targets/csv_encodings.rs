//! Any text as an ib_calls attachment in UTF-16 (either byte order, with its BOM) and in
//! Windows-1252: never a panic, every physical line accounted for, and plain ASCII reads the
//! same rows in UTF-16 as in UTF-8.
#![no_main]

use std::sync::OnceLock;

use charlie::csv_ingest::{Origin, parse_attachment};
use charlie::definitions::Definitions;
use libfuzzer_sys::fuzz_target;

fn definitions() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| Definitions::parse(include_str!("../../reports.toml")).expect("valid"))
}

fuzz_target!(|data: &[u8]| {
    let ds = &definitions().datasets["ib_calls"];
    let origin = Origin::named("ib_calls_2024-03-14.csv");
    let text = String::from_utf8_lossy(data);
    let utf16 = |big_endian: bool| -> Vec<u8> {
        let mut out = if big_endian { vec![0xFE, 0xFF] } else { vec![0xFF, 0xFE] };
        for unit in text.encode_utf16() {
            let b = if big_endian { unit.to_be_bytes() } else { unit.to_le_bytes() };
            out.extend_from_slice(&b);
        }
        out
    };
    let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(&text);
    let utf8 = parse_attachment(ds, text.as_bytes(), &origin);
    let mut sixteen = Vec::new();
    for bytes in [utf16(false), utf16(true), cp1252.into_owned()] {
        let parsed = parse_attachment(ds, &bytes, &origin);
        if let Ok(p) = &parsed {
            assert!(p.lines.balanced(), "{:?}", p.lines);
            assert_eq!(p.rows.len() as u64 + p.duplicates + p.rows_rejected, p.rows_total);
        }
        sixteen.push(parsed);
    }
    let plain = text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\r' || b == b'\t');
    if plain
        && text.len() < 4096
        && let Ok(u8p) = &utf8
    {
        for p in sixteen.iter().take(2) {
            let p = p.as_ref().expect("UTF-16 reads what UTF-8 reads");
            assert_eq!((p.rows_total, p.rows.len()), (u8p.rows_total, u8p.rows.len()));
        }
    }
});
