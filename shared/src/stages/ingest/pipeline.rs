//! Parsing beside storing: the CSV reader (synchronous, CPU-bound) runs on a blocking thread and
//! hands chunks of rows over a channel of two, while the stage stores the previous chunk. The
//! reader reads from memory or from a byte stream (an S3 body), so a file of any size is never
//! held whole; memory holds the reader's buffers, the key set and at most three chunks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::csv_ingest::{AttachmentReader, KeyedRow, Origin, ReadSummary, Unusable};
use crate::definitions::Definitions;
use crate::ports::ByteChunks;

/// Where the file's bytes come from.
pub enum Input {
    /// Held in memory (small attachments): the encoding is chosen from all of it.
    Bytes(Vec<u8>),
    /// A stream of a known size (a large attachment archived in S3).
    Stream(ByteChunks, u64),
}

/// How reading the file ended.
#[derive(Debug)]
pub enum Ended {
    /// Every line was read.
    Read(ReadSummary),
    /// The file cannot be used (from the start: no summary; part way: what was read before).
    Unusable(Unusable, Option<ReadSummary>),
}

/// A file being parsed: take chunks with [`Parsing::next`], then [`Parsing::finish`].
pub struct Parsing {
    chunks: mpsc::Receiver<Vec<KeyedRow>>,
    reader: JoinHandle<Ended>,
}

/// Starts parsing `input` for `dataset` in chunks of `chunk_rows` rows.
pub fn parse(
    definitions: Arc<Definitions>,
    dataset: String,
    input: Input,
    file_name: String,
    received: DateTime<Utc>,
    chunk_rows: usize,
) -> Parsing {
    let (tx, chunks) = mpsc::channel(2);
    // The bridge is made here, inside the runtime, and blocks on it from the reader's thread.
    let input = match input {
        Input::Bytes(bytes) => Source::Bytes(bytes),
        Input::Stream(body, size) => {
            let async_read = tokio_util::io::StreamReader::new(body.map_err(std::io::Error::other));
            Source::Stream(
                Box::new(tokio_util::io::SyncIoBridge::new(async_read)),
                size,
            )
        }
    };
    let reader = tokio::task::spawn_blocking(move || {
        let Some(ds) = definitions.datasets.get(&dataset) else {
            return Ended::Unusable(Unusable::Malformed(format!("no dataset {dataset:?}")), None);
        };
        let origin = Origin {
            file_name: &file_name,
            received: Some(received),
        };
        match input {
            Source::Bytes(bytes) => {
                read_all(AttachmentReader::new(ds, &bytes, &origin), &tx, chunk_rows)
            }
            Source::Stream(read, size) => read_all(
                AttachmentReader::from_reader(ds, read, Some(size), &origin),
                &tx,
                chunk_rows,
            ),
        }
    });
    Parsing { chunks, reader }
}

enum Source {
    Bytes(Vec<u8>),
    Stream(Box<dyn std::io::Read + Send>, u64),
}

fn read_all(
    opened: Result<AttachmentReader<'_>, Unusable>,
    tx: &mpsc::Sender<Vec<KeyedRow>>,
    chunk_rows: usize,
) -> Ended {
    let mut reader = match opened {
        Ok(r) => r,
        Err(why) => return Ended::Unusable(why, None),
    };
    loop {
        match reader.next_chunk(chunk_rows) {
            Ok(Some(chunk)) => {
                if tx.blocking_send(chunk).is_err() {
                    // The stage stopped taking chunks (it paused before its deadline).
                    return Ended::Read(reader.finish());
                }
            }
            Ok(None) => return Ended::Read(reader.finish()),
            Err(why) => return Ended::Unusable(why, Some(reader.finish())),
        }
    }
}

impl Parsing {
    /// The next chunk of unique, valid rows; `None` once the file is read (or unusable).
    pub async fn next(&mut self) -> Option<Vec<KeyedRow>> {
        self.chunks.recv().await
    }

    /// How reading ended; call after [`Parsing::next`] answered `None`.
    pub async fn finish(self) -> anyhow::Result<Ended> {
        drop(self.chunks);
        self.reader
            .await
            .map_err(|e| anyhow::anyhow!("the CSV reader stopped: {e}"))
    }

    /// Stops reading (the stage pauses): the reader ends at its next chunk.
    pub fn abandon(self) {
        drop(self.chunks);
    }
}
