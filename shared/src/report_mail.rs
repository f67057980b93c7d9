//! The report mail: MIME built with a MIME library (`multipart/mixed` holding a text + HTML
//! `multipart/alternative` and the workbook), never by hand.

use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;

pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// One message's recipients. SES and Graph count all three lists against their 50.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
}

impl Recipients {
    pub fn len(&self) -> usize {
        self.to.len() + self.cc.len() + self.bcc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every address with its field, `to` first.
    pub fn all(&self) -> impl Iterator<Item = (Field, &str)> {
        [
            (Field::To, &self.to),
            (Field::Cc, &self.cc),
            (Field::Bcc, &self.bcc),
        ]
        .into_iter()
        .flat_map(|(f, list)| list.iter().map(move |a| (f, a.as_str())))
    }

    pub fn push(&mut self, field: Field, address: String) {
        match field {
            Field::To => self.to.push(address),
            Field::Cc => self.cc.push(address),
            Field::Bcc => self.bcc.push(address),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    To,
    Cc,
    Bcc,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::To => "to",
            Field::Cc => "cc",
            Field::Bcc => "bcc",
        }
    }
}

pub struct ReportMail<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    /// Shown in `Cc`. Blind copies are not in the MIME at all: only in the envelope.
    pub cc: &'a [String],
    /// Subject and bodies, rendered from the report's templates (`mail_template`).
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    /// The workbook's file name and bytes; `None` when it is not attached (a "no data" notice,
    /// or a link in the body instead).
    pub workbook: Option<(&'a str, &'a [u8])>,
    /// Unique per run and recipient group, so a receiving system can spot a duplicate.
    pub message_id: &'a str,
    pub date: DateTime<Utc>,
}

/// Renders the mail to RFC 5322 bytes: `multipart/mixed` (or `alternative` alone without an
/// attachment), non-ASCII subject and file name encoded, lines within SMTP's limit.
pub fn render(mail: &ReportMail) -> std::io::Result<Vec<u8>> {
    let to: Vec<&str> = mail.to.iter().map(String::as_str).collect();
    let mut message = MessageBuilder::new().from(("Charlie reports", mail.from));
    if !to.is_empty() {
        message = message.to(to);
    }
    if !mail.cc.is_empty() {
        message = message.cc(mail.cc.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let message = message
        .subject(mail.subject)
        .message_id(mail.message_id)
        .date(mail.date.timestamp())
        .text_body(mail.text)
        .html_body(mail.html);
    match mail.workbook {
        Some((file_name, bytes)) => message.attachment(XLSX_CONTENT_TYPE, file_name, bytes),
        None => message,
    }
    .write_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    #[test]
    fn the_mail_parses_with_both_bodies_and_the_exact_attachment() {
        let workbook: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let to = vec![
            "a@contoso.example".to_owned(),
            "b@contoso.example".to_owned(),
        ];
        let bytes = render(&ReportMail {
            from: "reports@charlie.example",
            to: &to,
            cc: &["c@contoso.example".to_owned()],
            subject: "Rapport quotidien — 2024-03-14",
            text: "attached: 42 rows",
            html: "<p>Call-centre &lt;daily&gt;</p>",
            workbook: Some(("call_centre_daily-2024-03-14.xlsx", &workbook)),
            message_id: "run-1.group-1@charlie.example",
            date: "2024-03-15T06:00:00Z".parse().unwrap(),
        })
        .unwrap();
        assert!(
            bytes.split(|&b| b == b'\n').all(|l| l.len() <= 998),
            "SMTP line limit"
        );
        let msg = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(msg.subject(), Some("Rapport quotidien — 2024-03-14"));
        assert_eq!(msg.to().unwrap().iter().count(), 2);
        assert_eq!(
            msg.cc().unwrap().first().unwrap().address(),
            Some("c@contoso.example")
        );
        assert!(msg.body_text(0).unwrap().contains("42 rows"));
        assert!(
            msg.body_html(0)
                .unwrap()
                .contains("Call-centre &lt;daily&gt;")
        );
        let att = msg.attachment(0).unwrap();
        assert_eq!(
            att.attachment_name(),
            Some("call_centre_daily-2024-03-14.xlsx")
        );
        assert_eq!(att.content_type().unwrap().ctype(), "application");
        assert_eq!(att.contents(), &workbook[..]);
    }

    #[test]
    fn a_no_data_notice_says_so_and_attaches_nothing() {
        let to = vec!["a@contoso.example".to_owned()];
        let bytes = render(&ReportMail {
            from: "reports@charlie.example",
            to: &to,
            cc: &[],
            subject: "Daily for 2024-03-16",
            text: "there was no data for the Daily for 2024-03-16",
            html: "<p>there was <b>no data</b></p>",
            workbook: None,
            message_id: "run-2.group-1@charlie.example",
            date: "2024-03-17T06:00:00Z".parse().unwrap(),
        })
        .unwrap();
        let msg = MessageParser::default().parse(&bytes).unwrap();
        assert!(
            msg.body_text(0)
                .unwrap()
                .contains("no data for the Daily for 2024-03-16")
        );
        assert!(msg.body_html(0).unwrap().contains("<b>no data</b>"));
        assert_eq!(msg.attachment_count(), 0);
    }
}
