//! Any bytes as an ib_calls attachment, in memory and as a stream: never a panic, and every
//! physical line accounted for (header + valid + rejected + blank = total).
#![no_main]

use std::sync::OnceLock;

use charlie::csv_ingest::{AttachmentReader, Origin, Unusable, parse_attachment};
use charlie::definitions::Definitions;
use libfuzzer_sys::fuzz_target;

fn definitions() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| Definitions::parse(include_str!("../../reports.toml")).expect("valid"))
}

fuzz_target!(|data: &[u8]| {
    let ds = &definitions().datasets["ib_calls"];
    let origin = Origin::named("ib_calls_2024-03-14.csv");
    let in_memory = parse_attachment(ds, data, &origin);
    if let Ok(parsed) = &in_memory {
        assert!(parsed.lines.balanced(), "{:?}", parsed.lines);
        assert_eq!(
            parsed.rows.len() as u64 + parsed.duplicates + parsed.rows_rejected,
            parsed.rows_total
        );
    }
    // The stream reads the same records (its encoding is chosen from the first 256 KiB only,
    // so only UTF-8 inputs must agree exactly).
    let streamed = AttachmentReader::from_reader(ds, data, Some(data.len() as u64), &origin)
        .and_then(|mut r| {
            let mut n = 0;
            while let Some(chunk) = r.next_chunk(7)? {
                n += chunk.len();
            }
            Ok::<_, Unusable>((n, r.finish()))
        });
    if std::str::from_utf8(data).is_ok()
        && let (Ok(parsed), Ok((n, summary))) = (&in_memory, &streamed)
    {
        assert_eq!(parsed.rows.len(), *n);
        assert_eq!(parsed.lines, summary.lines);
    }
});
