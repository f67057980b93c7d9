//! `ObjectStore`: the S3 bucket (raw/, quarantine/, reports/, config/).

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;

#[derive(Clone, Debug)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// Where a stored object landed.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub key: String,
    pub version_id: Option<String>,
}

impl ObjectStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        ObjectStore {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<Stored> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .with_context(|| format!("writing s3://{}/{key}", self.bucket))?;
        Ok(Stored {
            key: key.to_owned(),
            version_id: out.version_id,
        })
    }

    /// A URL that downloads `key` (at `version_id`) without credentials until `expires_in` has
    /// passed (SigV4 presigning: at most 7 days).
    pub async fn presigned_get(
        &self,
        key: &str,
        version_id: Option<&str>,
        expires_in: std::time::Duration,
    ) -> anyhow::Result<String> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .context("a presigned link lasts at most 7 days")?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .presigned(config)
            .await
            .with_context(|| format!("presigning s3://{}/{key}", self.bucket))?;
        Ok(request.uri().to_owned())
    }

    pub async fn get(&self, key: &str, version_id: Option<&str>) -> anyhow::Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .with_context(|| format!("reading s3://{}/{key}", self.bucket))?;
        let body = out
            .body
            .collect()
            .await
            .with_context(|| format!("reading the body of s3://{}/{key}", self.bucket))?;
        Ok(body.into_bytes().to_vec())
    }
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
    }
}
