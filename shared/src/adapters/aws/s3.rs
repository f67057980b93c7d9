//! The bucket on S3 (raw/, quarantine/, reports/, config/).

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;

use futures::{StreamExt, TryStreamExt};

use crate::ports::{ByteChunks, NoSuchObject, ObjectInfo, Objects, StoredObject};

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

    /// A failed GetObject, as [`NoSuchObject`] when the key (or version) is not there.
    fn get_error(
        &self,
        key: &str,
        e: aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::get_object::GetObjectError>,
    ) -> anyhow::Error {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let missing = matches!(e.code(), Some("NoSuchKey" | "NoSuchVersion"))
            || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
        let at = format!("reading s3://{}/{key}", self.bucket);
        if missing {
            anyhow::Error::new(NoSuchObject(format!("s3://{}/{key}", self.bucket))).context(at)
        } else {
            anyhow::Error::new(e).context(at)
        }
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

    async fn versions(&self, key: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .with_context(|| format!("listing the versions of s3://{}/{key}", self.bucket))?;
            for v in page.versions() {
                if v.key() != Some(key) {
                    continue;
                }
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    version_id: v.version_id().map(str::to_owned),
                    size: v.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    modified: v
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                        .unwrap_or_default(),
                    latest: v.is_latest().unwrap_or(false),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        }
        out.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.latest.cmp(&a.latest)));
        Ok(out)
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<ObjectInfo>> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(after.map(str::to_owned))
            .max_keys(i32::try_from(limit.min(1000)).unwrap_or(1000))
            .send()
            .await
            .with_context(|| format!("listing s3://{}/{prefix}", self.bucket))?;
        Ok(page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_owned(),
                    version_id: None,
                    size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    modified: o
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                        .unwrap_or_default(),
                    latest: true,
                })
            })
            .collect())
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
        let at = || format!("writing s3://{}/{key} from {}", self.bucket, path.display());
        let size = std::fs::metadata(path).with_context(at)?.len();
        let part = |offset: u64, len: u64| async move {
            ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(anyhow::Error::from)
        };
        if size <= PART_BYTES {
            let body = part(0, size).await.with_context(at)?;
            return self
                .put_body(key, body, content_type)
                .await
                .with_context(at);
        }
        let parts = futures::stream::iter((0..size).step_by(PART_BYTES as usize))
            .then(|offset| part(offset, PART_BYTES.min(size - offset)))
            .boxed();
        self.multipart(key, content_type, parts)
            .await
            .with_context(at)
    }

    /// Uploads a stream part by part: memory holds one part ([`PART_BYTES`]); a stream that
    /// ends within the first part is one PUT.
    async fn put_stream(
        &self,
        key: &str,
        body: ByteChunks,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        let at = || format!("writing s3://{}/{key} from a stream", self.bucket);
        let mut parts = parts_of(body, PART_BYTES as usize).boxed();
        let Some(first) = parts.next().await.transpose().with_context(at)? else {
            return self
                .put_body(key, ByteStream::from_static(b""), content_type)
                .await
                .with_context(at);
        };
        if first.len() < PART_BYTES as usize {
            return self
                .put_body(key, ByteStream::from(first), content_type)
                .await
                .with_context(at);
        }
        let parts = futures::stream::once(async { Ok(first) })
            .chain(parts)
            .map_ok(ByteStream::from)
            .boxed();
        self.multipart(key, content_type, parts)
            .await
            .with_context(at)
    }

    async fn copy(&self, from: &str, to: &str) -> anyhow::Result<StoredObject> {
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(format!("{}/{}", self.bucket, crate::uri::s3_key(from)))
            .send()
            .await
            .with_context(|| format!("copying s3://{}/{from} to {to}", self.bucket))?;
        Ok(StoredObject {
            key: to.to_owned(),
            version_id: out.version_id,
        })
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

    async fn presigned_put(
        &self,
        key: &str,
        content_type: &str,
        sha256_base64: &str,
        size: u64,
        expires_in: std::time::Duration,
    ) -> anyhow::Result<String> {
        let size = i64::try_from(size).context("an upload's size fits in an i64")?;
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .context("a presigned upload lasts at most 7 days")?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .checksum_sha256(sha256_base64)
            .content_length(size)
            .presigned(config)
            .await
            .with_context(|| format!("presigning an upload to s3://{}/{key}", self.bucket))?;
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
            .map_err(|e| self.get_error(key, e))?;
        let body = out
            .body
            .collect()
            .await
            .with_context(|| format!("reading the body of s3://{}/{key}", self.bucket))?;
        Ok(body.into_bytes().to_vec())
    }

    async fn get_stream(&self, key: &str) -> anyhow::Result<(ByteChunks, u64)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.get_error(key, e))?;
        let size = out.content_length.unwrap_or_default().max(0) as u64;
        let at = format!("reading the body of s3://{}/{key}", self.bucket);
        let body = futures::stream::try_unfold(out.body, move |mut body| {
            let at = at.clone();
            async move {
                match body.try_next().await.context(at)? {
                    Some(piece) => Ok(Some((piece, body))),
                    None => Ok(None),
                }
            }
        })
        .boxed();
        Ok((body, size))
    }
}

impl S3Objects {
    /// A multipart upload of `parts` (each but the last at least 5 MiB), aborted on failure.
    async fn multipart(
        &self,
        key: &str,
        content_type: &str,
        mut parts: futures::stream::BoxStream<'_, anyhow::Result<ByteStream>>,
    ) -> anyhow::Result<StoredObject> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await?;
        let upload_id = upload
            .upload_id()
            .context("S3 gave no upload id")?
            .to_owned();
        let result = async {
            let mut done = Vec::new();
            while let Some(body) = parts.next().await {
                let number = i32::try_from(done.len() + 1).context("too many parts")?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(body?)
                    .send()
                    .await?;
                done.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag)
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
                        .set_parts(Some(done))
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
                Err(e)
            }
        }
    }
}

/// Regroups a stream's pieces into parts of `size` bytes (the last one shorter).
fn parts_of(
    body: ByteChunks,
    size: usize,
) -> impl futures::Stream<Item = anyhow::Result<Vec<u8>>> + Send {
    futures::stream::try_unfold(
        (body, Vec::with_capacity(size), false),
        move |(mut body, mut buf, mut ended)| async move {
            loop {
                if buf.len() >= size {
                    let mut rest = buf.split_off(size);
                    rest.reserve(size - rest.len().min(size));
                    return Ok(Some((buf, (body, rest, ended))));
                }
                if ended {
                    return Ok((!buf.is_empty()).then(|| (buf, (body, Vec::new(), true))));
                }
                match body.next().await.transpose()? {
                    Some(piece) => buf.extend_from_slice(&piece),
                    None => ended = true,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_is_regrouped_into_parts_of_the_size_asked() {
        let pieces: Vec<anyhow::Result<bytes::Bytes>> = [3usize, 7, 1, 12, 2]
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(bytes::Bytes::from(vec![i as u8; *n])))
            .collect();
        let parts: Vec<Vec<u8>> = parts_of(futures::stream::iter(pieces).boxed(), 5)
            .try_collect()
            .await
            .unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![5, 5, 5, 5, 5]);
        let flat: Vec<u8> = parts.concat();
        let mut expected = Vec::new();
        for (i, n) in [3usize, 7, 1, 12, 2].iter().enumerate() {
            expected.extend(std::iter::repeat_n(i as u8, *n));
        }
        assert_eq!(flat, expected);
    }

    #[tokio::test]
    async fn a_short_stream_is_one_short_part_and_an_empty_one_none() {
        let one = futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"abc"))]).boxed();
        let parts: Vec<Vec<u8>> = parts_of(one, 5).try_collect().await.unwrap();
        assert_eq!(parts, vec![b"abc".to_vec()]);
        let none = futures::stream::iter(Vec::<anyhow::Result<bytes::Bytes>>::new()).boxed();
        let parts: Vec<Vec<u8>> = parts_of(none, 5).try_collect().await.unwrap();
        assert!(parts.is_empty());
    }

    #[test]
    fn copy_sources_are_url_encoded() {
        assert_eq!(
            crate::uri::s3_key("raw/ib calls/a#1~b.csv"),
            "raw/ib%20calls/a%231~b.csv"
        );
    }
}
