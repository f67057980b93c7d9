//! The report mail: MIME built with a MIME library (`multipart/mixed` holding a text + HTML
//! `multipart/alternative` and the workbook), never by hand.

use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;

pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

pub struct ReportMail<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    pub subject: &'a str,
    pub report_title: &'a str,
    pub period: &'a str,
    pub time_zone: &'a str,
    pub rows: u64,
    pub file_name: &'a str,
    pub workbook: &'a [u8],
    /// Unique per run and recipient group, so a receiving system can spot a duplicate.
    pub message_id: &'a str,
    pub date: DateTime<Utc>,
}

/// Renders the mail to RFC 5322 bytes.
pub fn render(mail: &ReportMail) -> std::io::Result<Vec<u8>> {
    let text = format!(
        "Hello,\n\nattached is the {title} for {period} ({rows} rows, times in {tz}).\n\n\
         This mail was sent by Charlie; reply to reach the operations team.\n",
        title = mail.report_title,
        period = mail.period,
        rows = mail.rows,
        tz = mail.time_zone,
    );
    let html = format!(
        "<!doctype html><html><body style=\"font-family:Segoe UI,Arial,sans-serif\">\
         <p>Hello,</p><p>attached is the <b>{title}</b> for <b>{period}</b> \
         ({rows} rows, times in {tz}).</p>\
         <p style=\"color:#666\">This mail was sent by Charlie; reply to reach the operations team.</p>\
         </body></html>",
        title = html_escape(mail.report_title),
        period = html_escape(mail.period),
        rows = mail.rows,
        tz = html_escape(mail.time_zone),
    );
    let to: Vec<&str> = mail.to.iter().map(String::as_str).collect();
    MessageBuilder::new()
        .from(("Charlie reports", mail.from))
        .to(to)
        .subject(mail.subject)
        .message_id(mail.message_id)
        .date(mail.date.timestamp())
        .text_body(text)
        .html_body(html)
        .attachment(XLSX_CONTENT_TYPE, mail.file_name, mail.workbook)
        .write_to_vec()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
            subject: "Rapport quotidien — 2024-03-14",
            report_title: "Call-centre <daily>",
            period: "2024-03-14",
            time_zone: "Europe/London",
            rows: 42,
            file_name: "call_centre_daily-2024-03-14.xlsx",
            workbook: &workbook,
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
}
