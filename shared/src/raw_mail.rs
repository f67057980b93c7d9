//! Mail as raw RFC 5322 bytes (what the relay uploads to `inbox/relay/`): the headers the
//! dataset rules read, every attachment, and why a message cannot be read at all.
//!
//! The rules (also in `docs/architecture.md`):
//! - **Every leaf part with a file in it counts**, whatever its disposition or content type: a
//!   part is an attachment when it has a file name (`Content-Disposition: filename`, or
//!   `Content-Type: name`, in RFC 2231 or RFC 2047 form), when its disposition is
//!   `attachment`, or when its type is neither `text/plain` nor `text/html` (those two,
//!   unnamed and not marked as attachments, are the mail's body). A part without a name is
//!   called `attachment-{n}` with an extension from its type.
//! - The bytes are the part's content after its transfer encoding (base64, quoted-printable)
//!   only: no character set is applied, so the dataset's own `encoding` reads them as it reads
//!   a Graph attachment.
//! - **Forwarded mail** (`message/rfc822`, `message/global`, nested up to [`MAX_DEPTH`]): the
//!   attachments of the attached message count as the outer mail's, and are matched with the
//!   outer mail's sender and subject (the inner headers cannot be verified, so they decide
//!   nothing).
//! - **Signed mail** (`multipart/signed`) is read through; the signature part is not an
//!   attachment. Encrypted mail (`multipart/encrypted`, `application/pkcs7-mime`) and TNEF
//!   (`winmail.dat`, `application/ms-tnef`) cannot be read: they are listed as unreadable, and a
//!   mail with nothing else to ingest is quarantined with that reason.
//! - A file that is not a mail (no `From` header) or was cut short (a multipart without its
//!   closing boundary, a base64 part of impossible length, a part that does not decode) is
//!   [`Unusable`]: quarantined whole with the reason.

use chrono::{DateTime, Utc};
use mail_parser::{Encoding, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use crate::ports::{AttachmentInfo, EmailAddress, MailMessage, MessageHeader, Recipient};

/// How deep attached messages are followed.
pub const MAX_DEPTH: usize = 4;

/// A parsed raw mail.
#[derive(Debug, Clone)]
pub struct RawMail {
    /// Its headers; `id` is the SHA-256 of the bytes (hex), `received` the newest `Received:`
    /// header's time, else its `Date:`, else when it was uploaded.
    pub message: MailMessage,
    /// Every attachment, with its content (ids are `part-{n}`, in the order of the MIME tree).
    pub attachments: Vec<(AttachmentInfo, Vec<u8>)>,
    /// Parts that hold something Charlie cannot read (TNEF, encryption), each with why.
    pub unreadable: Vec<String>,
}

/// Why a file cannot be read as a mail at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("not a mail: {0}")]
    NotMail(String),
    #[error("the mail is cut short: {0}")]
    Truncated(String),
    #[error("a part of the mail is broken: {0}")]
    Broken(String),
}

/// The SHA-256 of a raw mail, hex: its id and its name in `inbox/relay/`.
pub fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Parses a raw mail; `uploaded` stands in for the received time when no header gives one.
pub fn parse(bytes: &[u8], uploaded: DateTime<Utc>) -> Result<RawMail, Unusable> {
    let id = content_id(bytes);
    let parsed = MessageParser::default()
        .parse(bytes)
        .ok_or_else(|| Unusable::NotMail("no header section".into()))?;
    let from = parsed.from().and_then(|a| a.first()).ok_or_else(|| {
        Unusable::NotMail(
            "no From header at the start of the file (an RFC 5322 message begins with its headers)"
                .into(),
        )
    })?;
    let received = parsed
        .received()
        .and_then(|r| r.date())
        .or_else(|| parsed.date().cloned())
        .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0))
        .unwrap_or(uploaded);
    let headers = parsed
        .headers_raw()
        .map(|(name, value)| MessageHeader {
            name: name.to_owned(),
            value: unfold(value),
        })
        .collect();
    let message = MailMessage {
        id,
        subject: parsed.subject().map(str::to_owned),
        from: Some(Recipient {
            email_address: EmailAddress {
                name: from.name().map(str::to_owned),
                address: from.address().map(str::to_owned),
            },
        }),
        received: Some(received),
        // Graph's `internetMessageId` keeps the angle brackets: the same form here, so a mail
        // found by both paths has one Message-ID claim.
        internet_message_id: parsed.message_id().map(|m| format!("<{}>", m.trim())),
        headers,
    };
    let mut walk = Walk::default();
    walk.message(&parsed, bytes, 0)?;
    Ok(RawMail {
        message,
        attachments: walk.attachments,
        unreadable: walk.unreadable,
    })
}

/// A header's value on one line (folding whitespace is one space).
fn unfold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Default)]
struct Walk {
    attachments: Vec<(AttachmentInfo, Vec<u8>)>,
    unreadable: Vec<String>,
    parts: usize,
}

impl Walk {
    /// The parts of `message`; their offsets are into `raw`, the whole file (attached
    /// messages' too).
    fn message(
        &mut self,
        message: &mail_parser::Message<'_>,
        raw: &[u8],
        depth: usize,
    ) -> Result<(), Unusable> {
        for part in &message.parts {
            self.parts += 1;
            let n = self.parts;
            let (ctype, subtype) = part
                .content_type()
                .map(|ct| {
                    (
                        ct.ctype().to_ascii_lowercase(),
                        ct.subtype().unwrap_or("").to_ascii_lowercase(),
                    )
                })
                .unwrap_or_else(|| ("text".into(), "plain".into()));
            let name = part.attachment_name().map(str::to_owned);
            match &part.body {
                PartType::Multipart(_) => {
                    if subtype == "encrypted" {
                        self.unreadable.push(format!(
                            "part {n} is encrypted (multipart/encrypted): Charlie cannot read encrypted mail"
                        ));
                    }
                    closed(part, raw, n)?;
                    continue;
                }
                PartType::Message(inner) => {
                    if depth + 1 >= MAX_DEPTH {
                        self.unreadable.push(format!(
                            "part {n} is a mail attached {MAX_DEPTH} levels deep: not followed"
                        ));
                    } else {
                        self.message(inner, raw, depth + 1)?;
                    }
                    continue;
                }
                _ => {}
            }
            let full = format!("{ctype}/{subtype}");
            if matches!(
                full.as_str(),
                "application/pkcs7-signature"
                    | "application/x-pkcs7-signature"
                    | "application/pgp-signature"
            ) {
                continue; // a signed mail's signature: the signed parts are read as they are
            }
            let disposition_attachment = part
                .content_disposition()
                .is_some_and(|d| d.is_attachment());
            let body_text = matches!(full.as_str(), "text/plain" | "text/html");
            if name.is_none() && !disposition_attachment && body_text {
                continue; // the mail's body
            }
            let shown = name.clone().unwrap_or_else(|| {
                let ext = match full.as_str() {
                    "text/csv" => "csv",
                    "text/plain" => "txt",
                    "text/html" => "html",
                    _ => "bin",
                };
                format!("attachment-{n}.{ext}")
            });
            if full == "application/ms-tnef"
                || full == "application/vnd.ms-tnef"
                || shown.eq_ignore_ascii_case("winmail.dat")
            {
                self.unreadable.push(format!(
                    "{shown} is TNEF (Outlook's rich-text wrapper), which Charlie does not unpack: \
                     have the sender's Outlook send plain MIME (Internet format), or save the CSV and send it again"
                ));
                continue;
            }
            if matches!(
                full.as_str(),
                "application/pkcs7-mime" | "application/x-pkcs7-mime"
            ) {
                self.unreadable.push(format!(
                    "{shown} is S/MIME ({full}): Charlie cannot read encrypted or opaque-signed mail"
                ));
                continue;
            }
            if part.is_encoding_problem {
                return Err(Unusable::Broken(format!(
                    "{shown} (part {n}) does not decode as its Content-Transfer-Encoding says"
                )));
            }
            let bytes = content(part, raw, &shown, n)?;
            self.attachments.push((
                AttachmentInfo {
                    id: format!("part-{n}"),
                    name: shown,
                    content_type: full,
                    size: bytes.len() as u64,
                },
                bytes,
            ));
        }
        Ok(())
    }
}

/// A multipart part must end with its closing delimiter (`--boundary--`): a file that stops
/// before it lost its tail.
fn closed(part: &mail_parser::MessagePart<'_>, raw: &[u8], n: usize) -> Result<(), Unusable> {
    let Some(boundary) = part.content_type().and_then(|ct| ct.attribute("boundary")) else {
        return Err(Unusable::Broken(format!(
            "part {n} is multipart without a boundary"
        )));
    };
    let start = part.offset_body as usize;
    let end = (part.offset_end as usize).min(raw.len()).max(start);
    let closing = format!("--{boundary}--");
    if memchr::memmem::find(&raw[start..end], closing.as_bytes()).is_none()
        && memchr::memmem::find(&raw[start..], closing.as_bytes()).is_none()
    {
        return Err(Unusable::Truncated(format!(
            "part {n} (multipart) has no closing boundary {closing:?}"
        )));
    }
    Ok(())
}

/// A leaf part's bytes: its body as sent, with only the transfer encoding undone.
fn content(
    part: &mail_parser::MessagePart<'_>,
    raw: &[u8],
    shown: &str,
    n: usize,
) -> Result<Vec<u8>, Unusable> {
    let start = part.offset_body as usize;
    let end = (part.offset_end as usize).min(raw.len());
    let body = raw.get(start..end.max(start)).unwrap_or_default();
    match part.encoding {
        Encoding::Base64 => {
            let digits = body.iter().filter(|b| !b.is_ascii_whitespace()).count();
            if digits % 4 != 0 {
                return Err(Unusable::Truncated(format!(
                    "{shown} (part {n}): its base64 holds {digits} characters, not a multiple of 4"
                )));
            }
            mail_parser::decoders::base64::base64_decode(body).ok_or_else(|| {
                Unusable::Broken(format!("{shown} (part {n}): its base64 does not decode"))
            })
        }
        Encoding::QuotedPrintable => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body).ok_or_else(
                || {
                    Unusable::Broken(format!(
                        "{shown} (part {n}): its quoted-printable does not decode"
                    ))
                },
            )
        }
        Encoding::None => Ok(match &part.body {
            // 7bit/8bit/binary: the bytes as they are (mail-parser already cut them at the
            // boundary; a text part's `contents` would be its charset-decoded text instead).
            PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
            _ => body.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests;
