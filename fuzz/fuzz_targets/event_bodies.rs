//! Any body on the inbound queue (Charlie's messages, S3's event notifications) and on the
//! mailer's (SNS notifications of SES events): read or refused with a reason, never a panic;
//! an SES event gives only the statuses a delivery can take.
#![no_main]

use charlie::messages::{Inbound, parse_inbound};
use charlie::stages::mailer::ses_event_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Inbound::Created { objects, .. }) = parse_inbound(body) {
        // S3 escapes keys (`+` a space, `%XX` a byte): what is read is decoded, valid UTF-8.
        for o in objects {
            assert!(!o.key.contains('+') || body.contains('%') || body.contains("\\u"), "{:?}", o.key);
        }
    }
    if let Some(Ok((_, Some(status)))) = ses_event_of(body) {
        use charlie::contract::DeliveryStatus::{Bounced, Complained, Delivered};
        assert!([Delivered, Bounced, Complained].contains(&status) && (1..=3).contains(&status.rank()));
    }
});
