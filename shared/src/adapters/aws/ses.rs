//! SES v2: report mail sent as raw MIME from a verified identity.

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};

use crate::definitions::TransportKind;
use crate::ports::{MailTransport, OutgoingMail, SentMail};

#[derive(Clone, Debug)]
pub struct SesTransport {
    client: aws_sdk_sesv2::Client,
    configuration_set: Option<String>,
}

impl SesTransport {
    pub fn new(client: aws_sdk_sesv2::Client, configuration_set: Option<String>) -> Self {
        SesTransport {
            client,
            configuration_set,
        }
    }
}

#[async_trait]
impl MailTransport for SesTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Ses
    }

    /// Sends the MIME to the recipients (the envelope: blind copies are only here; the other
    /// headers are in the MIME) and returns SES's message id.
    async fn send(&self, mail: &OutgoingMail<'_>) -> anyhow::Result<SentMail> {
        let recipients = mail.recipients;
        let list = |l: &[String]| (!l.is_empty()).then(|| l.to_vec());
        let out = self
            .client
            .send_email()
            .from_email_address(mail.from)
            .destination(
                Destination::builder()
                    .set_to_addresses(list(&recipients.to))
                    .set_cc_addresses(list(&recipients.cc))
                    .set_bcc_addresses(list(&recipients.bcc))
                    .build(),
            )
            .content(
                EmailContent::builder()
                    .raw(
                        RawMessage::builder()
                            .data(Blob::new(mail.mime.to_vec()))
                            .build()?,
                    )
                    .build(),
            )
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await
            .with_context(|| format!("sending through SES to {} recipient(s)", recipients.len()))?;
        let id = out
            .message_id
            .context("SES accepted the mail but returned no message id")?;
        Ok(SentMail {
            provider_message_id: id,
            draft_id: None,
        })
    }
}
