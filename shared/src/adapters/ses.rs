//! `SesTransport`: sends raw MIME through SES v2 from a verified identity.

use anyhow::Context;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};

use crate::report_mail::Recipients;

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

    /// Sends `mime` to `recipients` (the envelope: blind copies are only here; the other
    /// headers are in the MIME) and returns SES's message id.
    pub async fn send_raw(
        &self,
        from: &str,
        recipients: &Recipients,
        mime: Vec<u8>,
    ) -> anyhow::Result<String> {
        let list = |l: &[String]| (!l.is_empty()).then(|| l.to_vec());
        let out = self
            .client
            .send_email()
            .from_email_address(from)
            .destination(
                Destination::builder()
                    .set_to_addresses(list(&recipients.to))
                    .set_cc_addresses(list(&recipients.cc))
                    .set_bcc_addresses(list(&recipients.bcc))
                    .build(),
            )
            .content(
                EmailContent::builder()
                    .raw(RawMessage::builder().data(Blob::new(mime)).build()?)
                    .build(),
            )
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await
            .with_context(|| format!("sending through SES to {} recipient(s)", recipients.len()))?;
        out.message_id
            .context("SES accepted the mail but returned no message id")
    }
}
