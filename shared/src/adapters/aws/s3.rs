//! The bucket on S3 (raw/, quarantine/, reports/, config/).

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;

use crate::ports::{Objects, StoredObject};

/// Part size of multipart uploads (S3 allows 5 MiB to 5 GiB, at most 10,000 parts).
pub const PART_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Objects {
            client,
            bucket: bucket.into(),
        }
    }

    /// The S3 client for `config` (path-style against an emulator).
    pub fn client(config: &super::AwsConfig) -> aws_sdk_s3::Client {
        let s3 = aws_sdk_s3::config::Builder::from(&config.sdk)
            .force_path_style(config.path_style)
            .build();
        aws_sdk_s3::Client::from_conf(s3)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// One PUT of `body`; callers say what was being written.
    async fn put_body(
        &self,
        key: &str,
        body: ByteStream,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await?;
        Ok(StoredObject {
            key: key.to_owned(),
            version_id: out.version_id,
        })
    }
}

#[async_trait]
impl Objects for S3Objects {
    fn locate(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        self.put_body(key, ByteStream::from(bytes), content_type)
            .await
            .with_context(|| format!("writing s3://{}/{key}", self.bucket))
    }

    /// Uploads a file without reading it into memory: one PUT up to [`PART_BYTES`], else a
    /// multipart upload of parts read from the file one at a time (aborted on failure).
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        use aws_sdk_s3::primitives::Length;
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let at = || format!("writing s3://{}/{key} from {}", self.bucket, path.display());
        let size = std::fs::metadata(path).with_context(at)?.len();
        let part = |offset: u64, len: u64| async move {
            ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
        };
        if size <= PART_BYTES {
            let body = part(0, size).await.with_context(at)?;
            return self
                .put_body(key, body, content_type)
                .await
                .with_context(at);
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .with_context(at)?;
        let upload_id = upload
            .upload_id()
            .context("S3 gave no upload id")?
            .to_owned();
        let result = async {
            let mut parts = Vec::new();
            for (n, offset) in (0..size).step_by(PART_BYTES as usize).enumerate() {
                let number = i32::try_from(n + 1).context("too many parts")?;
                let body = part(offset, PART_BYTES.min(size - offset)).await?;
                let done = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(body)
                    .send()
                    .await?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(done.e_tag)
                        .build(),
                );
            }
            let out = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await?;
            anyhow::Ok(out.version_id)
        }
        .await;
        match result {
            Ok(version_id) => Ok(StoredObject {
                key: key.to_owned(),
                version_id,
            }),
            Err(e) => {
                // Parts of an unfinished upload are billed until aborted; the lifecycle rule
                // cleans up what an abort that fails leaves.
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(error = %abort, key, "could not abort the failed multipart upload");
                }
                Err(e).with_context(at)
            }
        }
    }

    /// A URL that downloads `key` (at `version_id`) without credentials until `expires_in` has
    /// passed (SigV4 presigning: at most 7 days).
    async fn presigned_get(
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

    async fn get(&self, key: &str, version_id: Option<&str>) -> anyhow::Result<Vec<u8>> {
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
