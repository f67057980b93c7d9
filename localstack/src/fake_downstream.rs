//! A fake downstream persistence API ("MS4") for the tests, the demo and the benchmark. It
//! follows `docs/downstream-api.md` (and `docs/downstream-openapi.json`, the same contract):
//! - one route, `POST /batch-metadata` (404 for any other path, 405 with `Allow: POST` for any
//!   other method), spoken as HTTP/1.1 with keep-alive (several requests per connection,
//!   `Content-Length` bodies) on its own small server, so that a fault can be a real TCP reset;
//! - the checks, in this order: path and method; `Authorization: Bearer {token}`, compared in
//!   constant time (401 `unauthorized`); the body at most 1 MiB (413); the body's shape (400
//!   `bad_request` with the `field` at fault: `items`, `items[3].id`, `items[0].dates[1]`, …):
//!   1 to 500 items, each with `id` (32 lowercase hex digits), `mailbox`, `message_id`,
//!   `attachment`, `dataset`, `raw_key` (strings), `dates` (`YYYY-MM-DD` days), `rows_total`,
//!   `rows_new`, `rows_duplicate`, `rows_rejected` (non-negative integers), `quarantined` and
//!   `correlation_id` (a string or `null`), fields it does not know ignored; then
//!   `Idempotency-Key` (64 lowercase hex digits, else 400 with `field` `Idempotency-Key`);
//! - idempotency by key: a key seen with the same body gets the first answer again (status and
//!   body), with another body 409. Only answers that stored something or are final are
//!   remembered: 200, 400, and a 207 that stored an item or has no `retry` in it (a 207 of
//!   nothing but `retry` remembered would make the sender's retry of it useless). Fault answers
//!   (500, 429, 503, resets) and 401/404/405/409/413 are not;
//! - idempotency by item: an `id` stored before is a `duplicate`, never stored twice. Every item
//!   `accepted` → 200 `{"results": […]}`; anything else → 207 listing every item of the request
//!   exactly once (`accepted`, `duplicate`, `rejected` with its `reason`, `retry`). Never a 200
//!   when something was not stored;
//! - switches, settable while it runs: the next N calls fail, or every call until cleared
//!   ([`FakeDownstream::fail_next`], [`FakeDownstream::set_fault`], see [`Fault`]: 500, 429 with
//!   `Retry-After`, 503 with or without it, a slow answer *after* the batch was stored, a reset
//!   after the request was read, an outage resetting every connection before anything is read);
//!   items matching a rule are `rejected` ([`FakeDownstream::reject_where`]); each item is
//!   answered `retry` the first N times ([`FakeDownstream::retry_first`]); every answer waits
//!   ([`FakeDownstream::set_latency`]); the token rotates ([`FakeDownstream::set_token`]);
//! - observations: the items stored (in arrival order, with their JSON), how often each id was
//!   stored, the calls (faulted ones included) and their statuses (0 for a reset), the
//!   `Idempotency-Key` and `X-Correlation-Id` of every call read, replays, keys that are not the
//!   SHA-256 of their body, ids that are not derived from their item's fields as the contract
//!   says, and the connections accepted (keep-alive shows as fewer connections than calls).
//!
//! It keeps everything in memory, for as long as it runs (the contract asks for 24 hours of
//! keys at least), and stops when dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The one route.
pub const PATH: &str = "/batch-metadata";
/// The largest body taken (413 above).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most items a batch may carry.
pub const MAX_ITEMS: usize = 500;

/// The request line and headers together, at most.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// A declared body over the limit is read and thrown away (so the connection stays usable and
/// the client reads the 413 instead of a reset) up to this size; beyond it, 413 and close.
const MAX_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// How a call fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 500.
    ServerError,
    /// 429 with `Retry-After: {retry_after_secs}`.
    Throttle { retry_after_secs: u64 },
    /// 503, with `Retry-After` when given.
    Unavailable { retry_after_secs: Option<u64> },
    /// The call is handled as usual (its items **stored**), then the answer waits `delay`: a
    /// client timing out first has its items stored all the same.
    Slow { delay: Duration },
    /// The request is read, nothing is stored, and the connection is reset (RST).
    Reset,
    /// The service is down: a connection is reset as soon as it is accepted (or, for a kept-alive
    /// one, as soon as the next request starts arriving), before anything is read.
    Outage,
}

/// Which items [`FakeDownstream::reject_where`] rejects.
#[derive(Clone)]
pub enum ItemMatch {
    /// The item's `attachment` contains this text.
    AttachmentContains(String),
    /// The predicate holds for the item's JSON (it runs under the fake's lock: it must not call
    /// the fake).
    Predicate(Arc<dyn Fn(&Value) -> bool + Send + Sync>),
}

impl ItemMatch {
    pub fn attachment_contains(text: impl Into<String>) -> Self {
        ItemMatch::AttachmentContains(text.into())
    }

    pub fn predicate(f: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        ItemMatch::Predicate(Arc::new(f))
    }

    fn matches(&self, item: &Value) -> bool {
        match self {
            ItemMatch::AttachmentContains(text) => item
                .get("attachment")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains(text.as_str())),
            ItemMatch::Predicate(f) => f(item),
        }
    }
}

impl fmt::Debug for ItemMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemMatch::AttachmentContains(text) => {
                f.debug_tuple("AttachmentContains").field(text).finish()
            }
            ItemMatch::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// An attachment-name substring.
impl From<&str> for ItemMatch {
    fn from(text: &str) -> Self {
        ItemMatch::attachment_contains(text)
    }
}

/// An attachment-name substring.
impl From<String> for ItemMatch {
    fn from(text: String) -> Self {
        ItemMatch::AttachmentContains(text)
    }
}

/// An item as the fake stored it.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub id: String,
    /// The item as it came, fields the fake does not know included.
    pub item: Value,
    /// The `Idempotency-Key` of the call that stored it.
    pub idempotency_key: String,
    /// The `X-Correlation-Id` of the call that stored it.
    pub call_correlation_id: Option<String>,
}

/// A remembered answer, by `Idempotency-Key`.
struct Remembered {
    body_sha256: [u8; 32],
    answer: Answer,
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<u64>,
    extra: Option<(&'static str, &'static str)>,
}

impl Answer {
    fn json(status: u16, body: &Value) -> Self {
        Answer {
            status,
            body: body.to_string().into_bytes(),
            retry_after: None,
            extra: None,
        }
    }

    fn error(status: u16, error: &str, message: &str) -> Self {
        Answer::json(status, &json!({ "error": error, "message": message }))
    }
}

struct Inner {
    token: String,
    // Switches.
    faults: VecDeque<Fault>,
    fault: Option<Fault>,
    rejects: Vec<(ItemMatch, String)>,
    retry_first: u32,
    retry_seen: HashMap<String, u32>,
    latency: Duration,
    // State.
    stored: Vec<StoredItem>,
    /// How often each id was stored (the dedup index too: an id in here is stored).
    store_counts: HashMap<String, u32>,
    keys: HashMap<String, Remembered>,
    // Observations.
    connections: u64,
    calls: u64,
    by_status: BTreeMap<u16, u64>,
    keys_seen: Vec<String>,
    correlation_ids_seen: Vec<String>,
    replays: u64,
    key_mismatches: u64,
    underived_ids: Vec<String>,
}

impl Inner {
    /// The fault that applies now, without taking it: the first of `fail_next`'s, else the
    /// standing one.
    fn peek_fault(&self) -> Option<&Fault> {
        self.faults.front().or(self.fault.as_ref())
    }

    /// Takes the fault that applies now (a `fail_next` one is used up).
    fn take_fault(&mut self) -> Option<Fault> {
        self.faults.pop_front().or_else(|| self.fault.clone())
    }

    /// Takes an outage if one applies now; counts the reset call.
    fn take_outage(&mut self) -> bool {
        if self.peek_fault() != Some(&Fault::Outage) {
            return false;
        }
        self.take_fault();
        self.calls += 1;
        *self.by_status.entry(0).or_default() += 1;
        true
    }

    fn count(&mut self, status: u16) {
        *self.by_status.entry(status).or_default() += 1;
    }
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    /// The state, even if a panicking predicate poisoned the lock (nothing in it is left half
    /// changed by a panic: a predicate runs before the item is changed).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fake persistence API; see the module's documentation. Stops when dropped.
pub struct FakeDownstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDownstream {
    fn drop(&mut self) {
        // The connections live in a JoinSet the server task owns: they go with it.
        self.server.abort();
    }
}

impl fmt::Debug for FakeDownstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDownstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeDownstream {
    /// Serves on 127.0.0.1 on a free port, on the current tokio runtime, accepting `token`.
    pub fn start(token: &str) -> anyhow::Result<FakeDownstream> {
        Self::start_on(token, 0)
    }

    /// [`FakeDownstream::start`] on `port` (0: a free one), for a demo that names its port.
    pub fn start_on(token: &str, port: u16) -> anyhow::Result<FakeDownstream> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("FakeDownstream::start needs a tokio runtime")?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the fake downstream API on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                token: token.to_owned(),
                faults: VecDeque::new(),
                fault: None,
                rejects: Vec::new(),
                retry_first: 0,
                retry_seen: HashMap::new(),
                latency: Duration::ZERO,
                stored: Vec::new(),
                store_counts: HashMap::new(),
                keys: HashMap::new(),
                connections: 0,
                calls: 0,
                by_status: BTreeMap::new(),
                keys_seen: Vec::new(),
                correlation_ids_seen: Vec::new(),
                replays: 0,
                key_mismatches: 0,
                underived_ids: Vec::new(),
            }),
        });
        let server = runtime.spawn(serve(listener, shared.clone()));
        Ok(FakeDownstream {
            shared,
            addr,
            server,
        })
    }

    /// `http://127.0.0.1:{port}`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on only `token` is accepted (a rotated secret: the old one gets 401).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// The next `n` calls fail with `fault` (after any queued before; ahead of a standing one).
    pub fn fail_next(&self, n: u32, fault: Fault) {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.shared
            .lock()
            .faults
            .extend(std::iter::repeat_n(fault, n));
    }

    /// Every call fails with `fault` until `set_fault(None)` (calls queued by
    /// [`FakeDownstream::fail_next`] come first).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.lock().fault = fault;
    }

    /// No fault any more, neither queued nor standing.
    pub fn clear_faults(&self) {
        let mut i = self.shared.lock();
        i.faults.clear();
        i.fault = None;
    }

    /// Items matching `matcher` (an attachment-name substring, or [`ItemMatch::predicate`] on
    /// the item's JSON) are answered `rejected` with `reason`, and never stored. Rules add up.
    pub fn reject_where(&self, matcher: impl Into<ItemMatch>, reason: &str) {
        self.shared
            .lock()
            .rejects
            .push((matcher.into(), reason.to_owned()));
    }

    /// No rejection rule any more.
    pub fn clear_rejections(&self) {
        self.shared.lock().rejects.clear();
    }

    /// From now on each new item id is answered `retry` (not stored) the first `n` times it is
    /// seen, then handled as usual; 0 turns it off. Counts start again at every call.
    pub fn retry_first(&self, n: u32) {
        let mut i = self.shared.lock();
        i.retry_first = n;
        i.retry_seen.clear();
    }

    /// Every answer waits this long before the call is handled (faults included; a reset at
    /// accept excepted). The call is handled even if the client has given up meanwhile.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The items stored, in arrival order.
    pub fn stored(&self) -> Vec<StoredItem> {
        self.shared.lock().stored.clone()
    }

    pub fn stored_count(&self) -> usize {
        self.shared.lock().stored.len()
    }

    /// The ids stored, in arrival order.
    pub fn stored_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .stored
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }

    /// How often each id was stored (every count is 1 unless something is broken).
    pub fn store_counts(&self) -> BTreeMap<String, u32> {
        self.shared
            .lock()
            .store_counts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The ids stored more than once (none unless something is broken).
    pub fn stored_more_than_once(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .shared
            .lock()
            .store_counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Requests received, faulted ones and connections reset by an outage included.
    pub fn calls(&self) -> u64 {
        self.shared.lock().calls
    }

    /// Calls by the status answered; a reset counts as 0.
    pub fn calls_by_status(&self) -> BTreeMap<u16, u64> {
        self.shared.lock().by_status.clone()
    }

    /// The `Idempotency-Key` of every call read that carried one (valid or not), in order,
    /// repeats included.
    pub fn idempotency_keys_seen(&self) -> Vec<String> {
        self.shared.lock().keys_seen.clone()
    }

    /// The `X-Correlation-Id` of every call read that carried one, in order.
    pub fn correlation_ids_seen(&self) -> Vec<String> {
        self.shared.lock().correlation_ids_seen.clone()
    }

    /// Calls answered with a remembered answer (same key, same body).
    pub fn replays(&self) -> u64 {
        self.shared.lock().replays
    }

    /// Calls whose valid `Idempotency-Key` is not the SHA-256 of their body, as the contract
    /// says it is (the fake answers them all the same, as a receiver cannot tell).
    pub fn key_mismatches(&self) -> u64 {
        self.shared.lock().key_mismatches
    }

    /// Ids of items stored that are not the first 32 hex digits of SHA-256 over `mailbox`,
    /// `message_id`, `attachment` and `dataset` joined with U+0000 (stored all the same).
    pub fn underived_ids(&self) -> Vec<String> {
        self.shared.lock().underived_ids.clone()
    }

    /// TCP connections accepted (outage resets included).
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }
}

/// The stable id the contract defines for an item.
pub fn item_id(mailbox: &str, message_id: &str, attachment: &str, dataset: &str) -> String {
    let mut h = Sha256::new();
    h.update(mailbox.as_bytes());
    h.update([0]);
    h.update(message_id.as_bytes());
    h.update([0]);
    h.update(attachment.as_bytes());
    h.update([0]);
    h.update(dataset.as_bytes());
    let mut id = hex::encode(h.finalize());
    id.truncate(32);
    id
}

/// Accepts until aborted; each connection is served in a task of a set this task owns.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let outage = {
                        let mut i = shared.lock();
                        i.connections += 1;
                        i.take_outage()
                    };
                    if outage {
                        reset(stream);
                    } else {
                        connections.spawn(connection(stream, shared.clone()));
                    }
                }
                // Out of descriptors and the like: wait, then accept again.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Drops the connection with a TCP reset (`SO_LINGER` 0): the client sees ECONNRESET.
fn reset(stream: TcpStream) {
    // Without the option the drop is an orderly close, still an error to a waiting client.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// A request as read.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    /// Over [`MAX_BODY_BYTES`] (read and thrown away, or not read when `drained` is false).
    TooLarge {
        drained: bool,
    },
}

impl Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What reading the next request came to.
enum Read {
    Request(Request, bool),
    /// The client closed (or the connection broke) between requests.
    Closed,
    /// Not HTTP this server can frame: answer this and close.
    Malformed(Answer),
}

/// Serves one connection's requests in turn until either side closes it.
async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The next request's first bytes, unless already here (pipelined).
        if buf.is_empty() && !fill(&mut stream, &mut buf).await {
            return;
        }
        if shared.lock().take_outage() {
            reset(stream);
            return;
        }
        let (request, keep_alive) = match read_request(&mut stream, &mut buf).await {
            Read::Request(request, keep_alive) => (request, keep_alive),
            Read::Closed => return,
            Read::Malformed(answer) => {
                {
                    let mut i = shared.lock();
                    i.calls += 1;
                    i.count(answer.status);
                }
                let _ = write_answer(&mut stream, &answer, false, false).await;
                return;
            }
        };
        let latency = {
            let mut i = shared.lock();
            i.calls += 1;
            if let Some(key) = request.header_str("idempotency-key") {
                i.keys_seen.push(key.to_owned());
            }
            if let Some(id) = request.header_str("x-correlation-id") {
                i.correlation_ids_seen.push(id.to_owned());
            }
            i.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let fault = shared.lock().take_fault();
        let (answer, delay) = match fault {
            Some(Fault::Reset | Fault::Outage) => {
                shared.lock().count(0);
                reset(stream);
                return;
            }
            Some(Fault::ServerError) => (
                Answer::error(500, "internal", "the fake failed this call on purpose"),
                None,
            ),
            Some(Fault::Throttle { retry_after_secs }) => {
                let mut a = Answer::error(429, "throttled", "too many requests; slow down");
                a.retry_after = Some(retry_after_secs);
                (a, None)
            }
            Some(Fault::Unavailable { retry_after_secs }) => {
                let mut a = Answer::error(503, "unavailable", "the service is unavailable");
                a.retry_after = retry_after_secs;
                (a, None)
            }
            Some(Fault::Slow { delay }) => (handle(&shared, &request), Some(delay)),
            None => (handle(&shared, &request), None),
        };
        shared.lock().count(answer.status);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let keep_alive = keep_alive && !matches!(request.body, Body::TooLarge { drained: false });
        let head_only = request.method == "HEAD";
        if write_answer(&mut stream, &answer, keep_alive, head_only)
            .await
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// Reads more bytes into `buf`; false when the connection closed or failed.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request (head, then a `Content-Length` body) from `buf` and the stream, leaving
/// whatever follows it in `buf`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Read {
    let malformed = |message: &str| Read::Malformed(Answer::error(400, "bad_request", message));
    let (head_len, method, path, headers, version) = loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers: Vec<(String, Vec<u8>)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                break (
                    len,
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                    headers,
                    req.version.unwrap_or(1),
                );
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return malformed("the request head is too large");
                }
                if !fill(stream, buf).await {
                    return Read::Closed;
                }
            }
            Err(e) => return malformed(&format!("malformed HTTP request: {e}")),
        }
    };
    buf.drain(..head_len);
    let header = |name: &'static str| values(&headers, name);
    if header("transfer-encoding").next().is_some() {
        return Read::Malformed(Answer::error(
            411,
            "length_required",
            "only Content-Length bodies are taken",
        ));
    }
    let lengths: Vec<String> = header("content-length").collect();
    let length = match lengths.as_slice() {
        [] => 0,
        [l] => match l.parse::<u64>() {
            Ok(l) => l,
            Err(_) => return malformed("Content-Length is not a number"),
        },
        [..] => return malformed("more than one Content-Length"),
    };
    let connection: Vec<String> = header("connection").collect();
    let keep_alive = if version == 0 {
        connection.iter().any(|c| c.contains("keep-alive"))
    } else {
        !connection.iter().any(|c| c.contains("close"))
    };
    // A client waiting for leave to send the body (curl does for bodies over 1 KiB) gets it,
    // unless the body is too large even to be thrown away.
    let expects_continue = header("expect").any(|e| e == "100-continue");
    if expects_continue
        && length > 0
        && length <= MAX_DRAIN_BYTES
        && (buf.len() as u64) < length
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Read::Closed;
    }
    let body = if length <= MAX_BODY_BYTES as u64 {
        let length = length as usize;
        while buf.len() < length {
            if !fill(stream, buf).await {
                return Read::Closed;
            }
        }
        Body::Bytes(buf.drain(..length).collect())
    } else if length <= MAX_DRAIN_BYTES {
        let mut left = length;
        loop {
            let take = left.min(buf.len() as u64) as usize;
            buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                break;
            }
            if !fill(stream, buf).await {
                return Read::Closed;
            }
        }
        Body::TooLarge { drained: true }
    } else {
        Body::TooLarge { drained: false }
    };
    let request = Request {
        method,
        path: path.split('?').next().unwrap_or_default().to_owned(),
        headers,
        body,
    };
    Read::Request(request, keep_alive)
}

/// The values of every `name` header (lowercase names), trimmed and lowercased.
fn values<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = String> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        207 => "Multi-Status",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes the answer (without its body for a HEAD request), closing the connection after it
/// unless `keep_alive`.
async fn write_answer(
    stream: &mut TcpStream,
    answer: &Answer,
    keep_alive: bool,
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        answer.status,
        reason_phrase(answer.status),
        answer.body.len()
    );
    if let Some(secs) = answer.retry_after {
        head.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if let Some((name, value)) = answer.extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&answer.body);
    }
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    if !keep_alive {
        let _ = stream.shutdown().await;
    }
    Ok(())
}

/// Equal, in time independent of where they differ (and of their lengths: digests compared).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn bad_request(message: &str, field: Option<&str>) -> Answer {
    let mut body = json!({ "error": "bad_request", "message": message });
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    Answer::json(400, &body)
}

/// The checks, in the contract's order, then the key, then the items.
fn handle(shared: &Shared, request: &Request) -> Answer {
    if request.path != PATH {
        return Answer::error(
            404,
            "not_found",
            "no such route; the one route is POST /batch-metadata",
        );
    }
    if request.method != "POST" {
        let mut a = Answer::error(405, "method_not_allowed", "only POST is allowed here");
        a.extra = Some(("allow", "POST"));
        return a;
    }
    let token = shared.lock().token.clone();
    let authorised = request
        .header("authorization")
        .and_then(|v| {
            let (scheme, token) = v.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then_some(token.trim_ascii())
        })
        .is_some_and(|given| same_secret(given, token.as_bytes()));
    if !authorised {
        let mut a = Answer::error(
            401,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        );
        a.extra = Some(("www-authenticate", "Bearer"));
        return a;
    }
    let body = match &request.body {
        Body::Bytes(b) => b,
        Body::TooLarge { .. } => {
            return Answer::error(
                413,
                "payload_too_large",
                &format!("the body is over {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let key = request
        .header_str("idempotency-key")
        .map(str::trim)
        .filter(|k| is_lower_hex(k, 64));
    let body_sha256: [u8; 32] = Sha256::digest(body).into();
    let items = match validate(body) {
        Ok(items) => items,
        Err(answer) => {
            // Final: remembered under a valid key.
            if let Some(key) = key {
                return remember_or_replay(shared, key, body_sha256, answer);
            }
            return answer;
        }
    };
    let Some(key) = key else {
        return bad_request(
            "Idempotency-Key must be 64 lowercase hex digits (the SHA-256 of the body)",
            Some("Idempotency-Key"),
        );
    };
    if hex::encode(body_sha256) != key {
        shared.lock().key_mismatches += 1;
    }
    let call_correlation_id = request.header_str("x-correlation-id").map(str::to_owned);
    let mut i = shared.lock();
    if let Some(answer) = replay(&mut i, key, body_sha256) {
        return answer;
    }
    let mut results = Vec::with_capacity(items.len());
    let mut all_accepted = true;
    let mut stored_any = false;
    let mut any_retry = false;
    for item in items {
        let id = item.id;
        let result = if i.store_counts.contains_key(&id) {
            json!({ "id": id, "status": "duplicate" })
        } else if let Some(reason) = i
            .rejects
            .iter()
            .find(|(m, _)| m.matches(&item.value))
            .map(|(_, reason)| reason.clone())
        {
            json!({ "id": id, "status": "rejected", "reason": reason })
        } else if i.retry_first > 0 && i.retry_seen.get(&id).copied().unwrap_or(0) < i.retry_first {
            *i.retry_seen.entry(id.clone()).or_default() += 1;
            any_retry = true;
            json!({ "id": id, "status": "retry", "reason": "not stored now; try again later" })
        } else {
            if !item.derived {
                i.underived_ids.push(id.clone());
            }
            *i.store_counts.entry(id.clone()).or_default() += 1;
            i.stored.push(StoredItem {
                id: id.clone(),
                item: item.value,
                idempotency_key: key.to_owned(),
                call_correlation_id: call_correlation_id.clone(),
            });
            stored_any = true;
            results.push(json!({ "id": id, "status": "accepted" }));
            continue;
        };
        all_accepted = false;
        results.push(result);
    }
    let answer = Answer::json(
        if all_accepted { 200 } else { 207 },
        &json!({ "results": results }),
    );
    if stored_any || !any_retry {
        i.keys.insert(
            key.to_owned(),
            Remembered {
                body_sha256,
                answer: answer.clone(),
            },
        );
    }
    answer
}

/// The remembered answer for `key`, or 409 when it was remembered for another body.
fn replay(i: &mut Inner, key: &str, body_sha256: [u8; 32]) -> Option<Answer> {
    let remembered = i.keys.get(key)?;
    if remembered.body_sha256 != body_sha256 {
        return Some(Answer::error(
            409,
            "conflict",
            "this Idempotency-Key was used before with a different body",
        ));
    }
    let answer = remembered.answer.clone();
    i.replays += 1;
    Some(answer)
}

/// Replays (or 409s) a key seen before, else remembers `answer` under it.
fn remember_or_replay(shared: &Shared, key: &str, body_sha256: [u8; 32], answer: Answer) -> Answer {
    let mut i = shared.lock();
    if let Some(replayed) = replay(&mut i, key, body_sha256) {
        return replayed;
    }
    i.keys.insert(
        key.to_owned(),
        Remembered {
            body_sha256,
            answer: answer.clone(),
        },
    );
    answer
}

/// An item that passed the checks.
struct Item {
    id: String,
    value: Value,
    /// Its id is derived from its fields as the contract says.
    derived: bool,
}

const STRING_FIELDS: [&str; 5] = ["mailbox", "message_id", "attachment", "dataset", "raw_key"];
const COUNT_FIELDS: [&str; 4] = ["rows_total", "rows_new", "rows_duplicate", "rows_rejected"];
const NULLABLE_FIELDS: [&str; 2] = ["quarantined", "correlation_id"];

/// The body's shape, or the 400 naming the first field at fault.
fn validate(body: &[u8]) -> Result<Vec<Item>, Answer> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("the body is not JSON: {e}"), None))?;
    let Value::Object(mut top) = value else {
        return Err(bad_request("the body must be a JSON object", None));
    };
    let Some(Value::Array(items)) = top.remove("items") else {
        return Err(bad_request(
            "`items` must be an array of items",
            Some("items"),
        ));
    };
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(bad_request(
            &format!(
                "`items` must hold 1 to {MAX_ITEMS} items, not {}",
                items.len()
            ),
            Some("items"),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (n, item) in items.into_iter().enumerate() {
        let at = |field: &str| format!("items[{n}].{field}");
        let Some(object) = item.as_object() else {
            return Err(bad_request(
                "an item must be an object",
                Some(&format!("items[{n}]")),
            ));
        };
        let id = match object.get("id").and_then(Value::as_str) {
            Some(id) if is_lower_hex(id, 32) => id.to_owned(),
            _ => {
                return Err(bad_request(
                    "`id` must be 32 lowercase hex digits",
                    Some(&at("id")),
                ));
            }
        };
        for field in STRING_FIELDS {
            if !object.get(field).is_some_and(Value::is_string) {
                return Err(bad_request(
                    &format!("`{field}` must be a string"),
                    Some(&at(field)),
                ));
            }
        }
        let Some(dates) = object.get("dates").and_then(Value::as_array) else {
            return Err(bad_request(
                "`dates` must be an array of YYYY-MM-DD days",
                Some(&at("dates")),
            ));
        };
        for (d, date) in dates.iter().enumerate() {
            if !date.as_str().is_some_and(is_day) {
                return Err(bad_request(
                    "a date must be a YYYY-MM-DD day",
                    Some(&format!("items[{n}].dates[{d}]")),
                ));
            }
        }
        for field in COUNT_FIELDS {
            if object.get(field).and_then(Value::as_u64).is_none() {
                return Err(bad_request(
                    &format!("`{field}` must be a non-negative integer"),
                    Some(&at(field)),
                ));
            }
        }
        for field in NULLABLE_FIELDS {
            if !object
                .get(field)
                .is_some_and(|v| v.is_string() || v.is_null())
            {
                return Err(bad_request(
                    &format!("`{field}` must be a string or null"),
                    Some(&at(field)),
                ));
            }
        }
        let text = |field: &str| {
            object
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let derived = item_id(
            text("mailbox"),
            text("message_id"),
            text("attachment"),
            text("dataset"),
        ) == id;
        out.push(Item {
            id,
            value: item,
            derived,
        });
    }
    Ok(out)
}

/// `YYYY-MM-DD`, a day that exists.
fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "test-downstream-token";

    fn item(n: u32) -> Value {
        item_named(n, &format!("file_{n}.csv"), "ib_calls")
    }

    fn item_named(n: u32, attachment: &str, dataset: &str) -> Value {
        let mailbox = "ops-exports@contoso.example";
        let message_id = format!("AAMkAGI2-{n}");
        json!({
            "id": item_id(mailbox, &message_id, attachment, dataset),
            "correlation_id": "0b8f0a4e-5d1c-4c39-9a8e-2f9e5b6d7c10",
            "mailbox": mailbox,
            "message_id": message_id,
            "attachment": attachment,
            "dataset": dataset,
            "dates": ["2024-03-14"],
            "rows_total": 120,
            "rows_new": 118,
            "rows_duplicate": 2,
            "rows_rejected": 0,
            "raw_key": format!("raw/{dataset}/2024-03-14/{n}/{attachment}"),
            "quarantined": null,
            "a_field_from_the_future": {"ignored": true}
        })
    }

    fn batch(items: &[Value]) -> Vec<u8> {
        json!({ "items": items }).to_string().into_bytes()
    }

    fn key_of(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    async fn post_with(
        client: &reqwest::Client,
        fake: &FakeDownstream,
        token: &str,
        key: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::Response> {
        client
            .post(format!("{}/batch-metadata", fake.base_url()))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .header("x-correlation-id", "7d7b4a52-8d7e-4d43-9a39-0e6d8f1c2b3a")
            .body(body)
            .send()
            .await
    }

    async fn post(client: &reqwest::Client, fake: &FakeDownstream, body: Vec<u8>) -> (u16, Value) {
        let key = key_of(&body);
        let r = post_with(client, fake, TOKEN, &key, body)
            .await
            .expect("answer");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `{id: (status, reason)}` of a results body, checking each id is listed once.
    fn results(body: &Value) -> BTreeMap<String, (String, Option<String>)> {
        let list = body["results"].as_array().expect("results");
        let map: BTreeMap<_, _> = list
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().expect("id").to_owned(),
                    (
                        r["status"].as_str().expect("status").to_owned(),
                        r["reason"].as_str().map(str::to_owned),
                    ),
                )
            })
            .collect();
        assert_eq!(map.len(), list.len(), "an id listed twice: {body}");
        map
    }

    /// The client saw a TCP reset (ECONNRESET somewhere in the error's causes).
    fn is_reset(err: &reqwest::Error) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionReset
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    fn id_of(item: &Value) -> String {
        item["id"].as_str().unwrap().to_owned()
    }

    fn ids(items: &[Value]) -> Vec<String> {
        items
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_new_batch_is_200_then_a_known_id_is_a_duplicate_in_a_207() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        assert!(fake.base_url().starts_with("http://127.0.0.1:"));
        assert!(!fake.base_url().ends_with('/'));
        let c = client();
        let (status, body) = post(&c, &fake, batch(&[item(1), item(2)])).await;
        assert_eq!(status, 200, "{body}");
        let r = results(&body);
        assert_eq!(r.len(), 2);
        assert!(r.values().all(|(s, _)| s == "accepted"));

        let (status, body) = post(&c, &fake, batch(&[item(1), item(3)])).await;
        assert_eq!(status, 207, "{body}");
        let r = results(&body);
        assert_eq!(r[&id_of(&item(1))].0, "duplicate");
        assert_eq!(r[&id_of(&item(3))].0, "accepted");

        assert_eq!(fake.stored_count(), 3);
        assert_eq!(fake.stored_ids(), ids(&[item(1), item(2), item(3)]));
        assert!(fake.store_counts().values().all(|n| *n == 1));
        assert!(fake.stored_more_than_once().is_empty());
        assert_eq!(
            fake.stored()[0].item["a_field_from_the_future"]["ignored"],
            true
        );
        assert_eq!(fake.calls(), 2);
        assert_eq!(fake.calls_by_status(), BTreeMap::from([(200, 1), (207, 1)]));
        assert_eq!(fake.idempotency_keys_seen().len(), 2);
        assert_eq!(fake.correlation_ids_seen().len(), 2);
        assert_eq!(fake.key_mismatches(), 0);
        assert!(fake.underived_ids().is_empty());
        assert_eq!(
            fake.connections(),
            1,
            "both calls on one kept-alive connection"
        );
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_is_401_and_stores_nothing() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        let body = batch(&[item(1)]);
        let r = post_with(&c, &fake, "not-the-token", &key_of(&body), body.clone())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert!(v["message"].is_string());
        assert!(!v.to_string().contains("not-the-token"));

        let r = c
            .post(format!("{}/batch-metadata", fake.base_url()))
            .header("idempotency-key", key_of(&body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(fake.stored_count(), 0);

        // A rotated token: the old one is refused, the new one taken.
        fake.set_token("rotated");
        let r = post_with(&c, &fake, TOKEN, &key_of(&body), body.clone())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let r = post_with(&c, &fake, "rotated", &key_of(&body), body)
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    #[tokio::test]
    async fn a_malformed_batch_is_400_naming_the_field() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        let field = |v: &Value| v["field"].as_str().map(str::to_owned);

        let mut bad_id = item(2);
        bad_id["id"] = json!("ABCDEF");
        let (status, v) = post(&c, &fake, batch(&[item(1), item(2), item(3), bad_id])).await;
        assert_eq!(
            (status, field(&v).as_deref()),
            (400, Some("items[3].id")),
            "{v}"
        );
        assert_eq!(v["error"], "bad_request");

        let mut bad_date = item(1);
        bad_date["dates"] = json!(["2024-03-14", "2024-02-30"]);
        let (status, v) = post(&c, &fake, batch(&[bad_date])).await;
        assert_eq!(
            (status, field(&v).as_deref()),
            (400, Some("items[0].dates[1]"))
        );

        let mut negative = item(1);
        negative["rows_new"] = json!(-1);
        let (status, v) = post(&c, &fake, batch(&[negative])).await;
        assert_eq!(
            (status, field(&v).as_deref()),
            (400, Some("items[0].rows_new"))
        );

        let mut missing = item(1);
        missing.as_object_mut().unwrap().remove("quarantined");
        let (status, v) = post(&c, &fake, batch(&[missing])).await;
        assert_eq!(
            (status, field(&v).as_deref()),
            (400, Some("items[0].quarantined"))
        );

        let (status, v) = post(&c, &fake, batch(&[])).await;
        assert_eq!((status, field(&v).as_deref()), (400, Some("items")));
        let many: Vec<Value> = (0..501).map(item).collect();
        let (status, v) = post(&c, &fake, batch(&many)).await;
        assert_eq!((status, field(&v).as_deref()), (400, Some("items")));

        let (status, v) = post(&c, &fake, b"{not json".to_vec()).await;
        assert_eq!((status, field(&v)), (400, None));

        let body = batch(&[item(1)]);
        let r = post_with(&c, &fake, TOKEN, "ABC", body).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(field(&v).as_deref(), Some("Idempotency-Key"));
        assert_eq!(fake.stored_count(), 0);
    }

    #[tokio::test]
    async fn a_key_reused_with_another_body_is_409() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        let first = batch(&[item(1)]);
        let key = key_of(&first);
        let r = post_with(&c, &fake, TOKEN, &key, first).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = post_with(&c, &fake, TOKEN, &key, batch(&[item(2)]))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string() && v["message"].is_string());
        assert_eq!(fake.stored_count(), 1);
    }

    #[tokio::test]
    async fn the_same_key_and_body_replay_the_first_answer() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        post(&c, &fake, batch(&[item(1)])).await;
        // A 207 (item 1 a duplicate), replayed as it was, not answered afresh.
        let body = batch(&[item(1), item(2)]);
        let first = post(&c, &fake, body.clone()).await;
        assert_eq!(first.0, 207);
        let again = post(&c, &fake, body).await;
        assert_eq!(again, first);
        assert_eq!(fake.replays(), 1);
        assert_eq!(fake.stored_count(), 2);
    }

    #[tokio::test]
    async fn throttle_and_unavailable_carry_retry_after_and_store_nothing() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        fake.fail_next(
            1,
            Fault::Throttle {
                retry_after_secs: 7,
            },
        );
        fake.fail_next(
            1,
            Fault::Unavailable {
                retry_after_secs: Some(3),
            },
        );
        fake.fail_next(
            1,
            Fault::Unavailable {
                retry_after_secs: None,
            },
        );
        fake.fail_next(1, Fault::ServerError);
        let body = batch(&[item(1)]);
        let key = key_of(&body);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = post_with(&c, &fake, TOKEN, &key, body.clone())
                .await
                .unwrap();
            seen.push((
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ));
        }
        assert_eq!(
            seen,
            [
                (429, Some("7".to_owned())),
                (503, Some("3".to_owned())),
                (503, None),
                (500, None)
            ]
        );
        assert_eq!(fake.stored_count(), 0);
        // Faults are not remembered: the same key is then handled.
        let r = post_with(&c, &fake, TOKEN, &key, body).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(fake.replays(), 0);
        assert_eq!(fake.calls(), 5);
        assert_eq!(fake.idempotency_keys_seen(), vec![key; 5]);
    }

    #[tokio::test]
    async fn slow_stores_first_and_answers_after_the_client_gave_up() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        fake.set_fault(Some(Fault::Slow {
            delay: Duration::from_secs(2),
        }));
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let body = batch(&[item(1), item(2)]);
        let key = key_of(&body);
        let err = post_with(&impatient, &fake, TOKEN, &key, body.clone())
            .await
            .expect_err("the client times out");
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(
            fake.stored_count(),
            2,
            "stored although the client saw a timeout"
        );
        // The retry (same key) gets the first answer: everything delivered.
        fake.set_fault(None);
        let (status, v) = post(&client(), &fake, body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(fake.replays(), 1);
        assert_eq!(fake.stored_count(), 2);
    }

    #[tokio::test]
    async fn reset_is_a_connection_error_and_stores_nothing() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        // A kept-alive connection first: the reset hits a reused connection.
        assert_eq!(post(&c, &fake, batch(&[item(9)])).await.0, 200);
        fake.fail_next(1, Fault::Reset);
        let body = batch(&[item(1)]);
        let err = post_with(&c, &fake, TOKEN, &key_of(&body), body.clone())
            .await
            .expect_err("reset");
        assert!(is_reset(&err), "{err:?}");
        assert_eq!(fake.stored_count(), 1);
        assert_eq!(fake.calls_by_status().get(&0), Some(&1));
        // The fault was the next call's only.
        assert_eq!(post(&c, &fake, body).await.0, 200);
        assert_eq!(fake.stored_count(), 2);
    }

    #[tokio::test]
    async fn an_outage_resets_every_connection_until_it_ends() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        assert_eq!(post(&c, &fake, batch(&[item(9)])).await.0, 200);
        fake.set_fault(Some(Fault::Outage));
        let body = batch(&[item(1)]);
        for _ in 0..3 {
            let err = post_with(&c, &fake, TOKEN, &key_of(&body), body.clone())
                .await
                .expect_err("outage");
            assert!(is_reset(&err), "{err:?}");
        }
        let fresh = client();
        let err = post_with(&fresh, &fake, TOKEN, &key_of(&body), body.clone())
            .await
            .expect_err("outage on a new connection");
        assert!(is_reset(&err), "{err:?}");
        assert_eq!(fake.stored_count(), 1);
        assert!(fake.calls_by_status()[&0] >= 4);
        assert_eq!(
            fake.idempotency_keys_seen().len(),
            1,
            "nothing read in an outage"
        );
        fake.set_fault(None);
        assert_eq!(post(&c, &fake, body).await.0, 200);
        assert_eq!(fake.stored_count(), 2);
    }

    #[tokio::test]
    async fn rejected_and_retry_items_give_a_207_listing_every_item_once() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        fake.reject_where("broken", "unreadable file");
        fake.reject_where(
            ItemMatch::predicate(|v| v["dataset"] == "retired"),
            "dataset retired",
        );
        fake.retry_first(1);
        let good = [item(1), item(2)];
        let broken = item_named(3, "broken_export.csv", "ib_calls");
        let retired = item_named(4, "old.csv", "retired");
        let all = [
            good[0].clone(),
            broken.clone(),
            good[1].clone(),
            retired.clone(),
        ];
        let (status, v) = post(&c, &fake, batch(&all)).await;
        assert_eq!(status, 207, "{v}");
        let r = results(&v);
        assert_eq!(r.keys().cloned().collect::<Vec<_>>(), {
            let mut i = ids(&all);
            i.sort();
            i
        });
        for id in ids(&good) {
            assert_eq!(r[&id].0, "retry");
        }
        assert_eq!(
            r[&id_of(&broken)],
            ("rejected".to_owned(), Some("unreadable file".to_owned()))
        );
        assert_eq!(
            r[&id_of(&retired)],
            ("rejected".to_owned(), Some("dataset retired".to_owned()))
        );
        assert_eq!(fake.stored_count(), 0);

        // Nothing stored and items to retry: not remembered, the same call is answered afresh.
        let (status, v) = post(&c, &fake, batch(&all)).await;
        assert_eq!(status, 207, "{v}");
        let r = results(&v);
        assert_eq!(r.len(), 4);
        for id in ids(&good) {
            assert_eq!(r[&id].0, "accepted");
        }
        assert_eq!(fake.replays(), 0);
        assert_eq!(fake.stored_ids(), ids(&good));

        // Rejected for good.
        let (status, v) = post(&c, &fake, batch(&[broken])).await;
        assert_eq!(status, 207);
        assert_eq!(results(&v).values().next().unwrap().0, "rejected");
        assert_eq!(fake.stored_count(), 2);
    }

    #[tokio::test]
    async fn other_routes_methods_and_big_bodies_are_refused_on_a_live_connection() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        let r = c
            .get(format!("{}/batch-metadata", fake.base_url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405);
        assert_eq!(r.headers()["allow"], "POST");
        let r = c
            .head(format!("{}/batch-metadata", fake.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405);
        // As curl sends a body over 1 KiB.
        let body = batch(&[item(7)]);
        let r = c
            .post(format!("{}/batch-metadata", fake.base_url()))
            .bearer_auth(TOKEN)
            .header("expect", "100-continue")
            .header("idempotency-key", key_of(&body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = c
            .post(format!("{}/other", fake.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let r = post_with(&c, &fake, TOKEN, &key_of(&big), big)
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 413);
        assert_eq!(post(&c, &fake, batch(&[item(1)])).await.0, 200);
        assert_eq!(fake.connections(), 1);
    }

    #[tokio::test]
    async fn latency_delays_every_answer_but_calls_run_side_by_side() {
        let fake = FakeDownstream::start(TOKEN).unwrap();
        fake.set_latency(Duration::from_millis(300));
        let c = client();
        let started = std::time::Instant::now();
        let calls = (0..4).map(|n| {
            let c = c.clone();
            let fake = &fake;
            async move { post(&c, fake, batch(&[item(n)])).await.0 }
        });
        let statuses = futures::future::join_all(calls).await;
        assert_eq!(statuses, [200; 4]);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        // One after another would take 1.2 s.
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    /// The sender's own body and key (`charlie::downstream`) pass the fake's checks, and its
    /// reading of the fake's 207 is the one meant.
    #[tokio::test]
    async fn the_senders_batches_fit_the_fake() {
        use charlie::downstream::{Answer as SenderAnswer, Batch, Item as SenderItem, ItemVerdict};
        let fake = FakeDownstream::start(TOKEN).unwrap();
        let c = client();
        let sender_item = |n: u32, attachment: &str| {
            let mailbox = "ops-exports@contoso.example".to_owned();
            let message_id = format!("AAMkAGI2-{n}");
            SenderItem {
                id: item_id(&mailbox, &message_id, attachment, "ib_calls"),
                correlation_id: None,
                mailbox,
                message_id,
                attachment: attachment.to_owned(),
                dataset: "ib_calls".to_owned(),
                dates: vec![chrono::NaiveDate::from_ymd_opt(2024, 3, 14).unwrap()],
                rows_total: 3,
                rows_new: 3,
                rows_duplicate: 0,
                rows_rejected: 0,
                raw_key: format!("raw/ib_calls/2024-03-14/{n}/{attachment}"),
                quarantined: None,
            }
        };
        let (a, b, bad) = (
            sender_item(1, "a.csv"),
            sender_item(2, "b.csv"),
            sender_item(3, "broken.csv"),
        );
        let first = Batch::of(&[&a]);
        let r = post_with(&c, &fake, TOKEN, &first.key, first.body.clone())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);

        fake.reject_where("broken", "unreadable file");
        let second = Batch::of(&[&b, &a, &bad]);
        let r = post_with(&c, &fake, TOKEN, &second.key, second.body.clone())
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 207, "{text}");
        let SenderAnswer::Items(verdicts) =
            charlie::downstream::classify(status, None, &text, &second.ids)
        else {
            panic!("not an item answer: {text}");
        };
        assert_eq!(verdicts[&a.id], ItemVerdict::Delivered { duplicate: true });
        assert_eq!(verdicts[&b.id], ItemVerdict::Delivered { duplicate: false });
        assert_eq!(
            verdicts[&bad.id],
            ItemVerdict::Rejected("unreadable file".into())
        );
        assert_eq!(fake.key_mismatches(), 0);
        assert!(fake.underived_ids().is_empty());
        assert_eq!(fake.stored_ids(), vec![a.id.clone(), b.id.clone()]);
    }

    #[test]
    fn the_token_check_and_the_day_check() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(is_day("2024-02-29"));
        assert!(!is_day("2023-02-29"));
        assert!(!is_day("2024-3-14"));
        assert!(!is_day("2024-03-14T00"));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(FakeDownstream::start(TOKEN).is_err());
    }
}
