//! Batched endpoints: call one item at a time, send one request per batch.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tollgate_batch::{Batch, BatchError, BatchLayer};
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::client::Client;
use crate::error::{Error, ErrorKind};

/// How a batched endpoint takes ids and gives items; for
/// [`Client::batched`].
///
/// The defaults fit an endpoint like `GET /metadata?id=1&id=2` answering
/// `{"items": [{"id": 1, ...}, {"id": 2, ...}]}`: ids in the repeated query
/// parameter `id`, items in the array at JSON pointer `/items`, each found
/// by its `id` field (a number or a string, compared as text). Batches of at
/// most 50, sent at most 10 ms after their first id, 4 in flight at once.
///
/// A numeric id must be an integer that fits in 64 bits: serde_json reads a
/// larger number as a float, whose text is not the digits sent, so such an
/// item is never matched and its caller gets [`ErrorKind::NotInBatch`]
/// (never another caller's item). An API with ids that large sends them as
/// strings. When an answer holds two items with one id, the last one is
/// taken.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    path: String,
    id_param: String,
    items_at: String,
    id_field: String,
    max_batch: usize,
    max_delay: Duration,
    max_in_flight: usize,
}

impl BatchSpec {
    /// A batched `GET` of `path` (under the client's base URL).
    pub fn get(path: impl Into<String>) -> Self {
        BatchSpec {
            path: path.into(),
            id_param: "id".into(),
            items_at: "/items".into(),
            id_field: "id".into(),
            max_batch: 50,
            max_delay: Duration::from_millis(10),
            max_in_flight: tollgate_batch::DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// The query parameter that carries the ids, repeated (default `id`).
    pub fn id_param(mut self, name: impl Into<String>) -> Self {
        self.id_param = name.into();
        self
    }

    /// The JSON pointer (RFC 6901) of the array of items in the answer
    /// (default `/items`; `""` for an answer that is the array itself).
    pub fn items_at(mut self, pointer: impl Into<String>) -> Self {
        self.items_at = pointer.into();
        self
    }

    /// The field of each item that holds its id (default `id`).
    pub fn id_field(mut self, name: impl Into<String>) -> Self {
        self.id_field = name.into();
        self
    }

    /// The most ids in one request (default 50).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// How long the first id of a batch waits for others (default 10 ms).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How many batched requests may be in flight at once (default 4).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
}

/// One batched request: the client, and where ids and items go.
#[derive(Clone)]
struct BatchCall {
    client: Client,
    spec: std::sync::Arc<BatchSpec>,
}

impl Service<Vec<String>> for BatchCall {
    type Response = HashMap<String, Value>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HashMap<String, Value>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ids: Vec<String>) -> Self::Future {
        let (client, spec) = (self.client.clone(), self.spec.clone());
        Box::pin(async move {
            let query: Vec<(&str, &str)> = ids
                .iter()
                .map(|id| (spec.id_param.as_str(), id.as_str()))
                .collect();
            let response = client
                .get(spec.path.clone())
                .query(&query)
                .send()
                .await?
                .error_for_status()?;
            let answer: Value = response.data()?;
            let items = answer
                .pointer(&spec.items_at)
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Decode,
                        format!("the batched answer has no array at `{}`", spec.items_at),
                    )
                })?;
            let mut found = HashMap::with_capacity(items.len());
            for item in items {
                let id = match item.get(&spec.id_field) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => continue,
                };
                found.insert(id, item.clone());
            }
            Ok(found)
        })
    }
}

/// A batched endpoint, called one item at a time; from
/// [`Client::batched`]. Clones share one batcher.
///
/// ```
/// use tollgate::{BatchSpec, Client};
/// use tollgate_testkit::FakeApi;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let api = FakeApi::start().await?; // serves GET /metadata?id=..&id=..
/// let client = Client::new(api.url())?;
/// let metadata = client.batched(BatchSpec::get("/metadata"));
///
/// let (a, b, c) = tokio::join!(metadata.load(1), metadata.load(2), metadata.load(3));
/// assert_eq!((a?["id"].clone(), b?["id"].clone(), c?["id"].clone()), (1.into(), 2.into(), 3.into()));
/// assert_eq!(api.hits("/metadata"), 1, "three calls, one request");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Batched {
    batch: Batch<BatchCall, String, Value>,
    path: String,
}

impl fmt::Debug for Batched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batched")
            .field("path", &self.path)
            .field("waiting", &self.batch.waiting())
            .finish()
    }
}

impl Batched {
    pub(crate) fn new(client: Client, spec: BatchSpec) -> Self {
        let mut layer =
            BatchLayer::new(spec.max_batch, spec.max_delay).max_in_flight(spec.max_in_flight);
        // A load is bounded by the client's timeout like any call: waiting
        // for the batch to fill, for a slot, and the request itself.
        if let Some(timeout) = client.inner.timeout {
            layer = layer.max_wait(timeout);
        }
        let path = spec.path.clone();
        let call = BatchCall {
            client,
            spec: std::sync::Arc::new(spec),
        };
        Batched {
            batch: layer.layer(call),
            path,
        }
    }

    /// The item with this id, fetched in a batch with the ids other callers
    /// ask for meanwhile.
    ///
    /// The whole wait (for the batch to fill, for a request slot, and the
    /// request) is bounded by the client's [timeout](crate::ClientBuilder::timeout),
    /// counted from this call. A caller that gives up (times out, or drops
    /// this future) leaves the batch: its id is not asked for if no other
    /// caller wants it. At most 10 000 callers wait for their batch to be
    /// sent (`tollgate_batch::DEFAULT_MAX_PENDING`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotInBatch`] when the batched answer had no item with
    /// this id (only this caller fails); when the batched request failed,
    /// its error's kind ([`ErrorKind::Status`], [`ErrorKind::Timeout`], ...)
    /// for every caller of the batch; [`ErrorKind::Timeout`] when no item
    /// came within the client's timeout; [`ErrorKind::TooManyPending`] when
    /// too many callers were already waiting for a batch.
    pub async fn load(&self, id: impl fmt::Display) -> Result<Value, Error> {
        self.batch
            .clone()
            .oneshot(id.to_string())
            .await
            .map_err(|e| batch_error(&e))
    }

    /// [`load`](Self::load), decoded as `T`.
    ///
    /// # Errors
    ///
    /// Those of `load`, and [`ErrorKind::Decode`] when the item is not a `T`.
    pub async fn load_as<T: DeserializeOwned>(&self, id: impl fmt::Display) -> Result<T, Error> {
        let item = self.load(id).await?;
        serde_json::from_value(item).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                "the batched item is not the type asked for",
            )
            .with_source(e)
        })
    }
}

/// The source of each caller's error when its batch failed: the batch's
/// error without the facade's `Error` that carried it, whose body snippet
/// (in its `Debug`) holds the other callers' items. Its chain goes on below
/// (a transport failure, a timeout).
struct BatchFailure(tollgate_core::SharedError);

impl BatchFailure {
    fn below(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let failed = self.0.get();
        match failed.downcast_ref::<Error>() {
            Some(error) => std::error::Error::source(error),
            None => Some(failed),
        }
    }
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Error`'s `Display` shows no body and no query.
        write!(f, "the batched request failed: {}", self.0)
    }
}

impl std::fmt::Debug for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchFailure")
            .field("error", &self.0.to_string())
            .field("source", &self.below())
            .finish()
    }
}

impl std::error::Error for BatchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.below()
    }
}

fn batch_error(error: &BatchError) -> Error {
    match error {
        BatchError::Missing => Error::new(
            ErrorKind::NotInBatch,
            "the batched answer has no item with this id",
        ),
        BatchError::Failed(shared) => {
            let failed = shared.get().downcast_ref::<Error>();
            let kind = failed.map_or(ErrorKind::Transport, Error::kind);
            let mut each = Error::new(kind, format!("the batched request failed: {shared}"))
                .with_source(BatchFailure(shared.clone()));
            // What each caller needs to act on: the status (404 is not 429
            // is not 503) and when to try again. Not the body's snippet:
            // it holds the other callers' items.
            if let Some(status) = failed.and_then(Error::status) {
                each = each.with_status(status);
            }
            if let Some(wait) = failed.and_then(Error::retry_after) {
                each = each.with_retry_after(wait);
            }
            each
        }
        BatchError::TimedOut { waited } => Error::new(
            ErrorKind::Timeout,
            format!("no batched item within {waited:?}"),
        )
        .with_source(error.clone()),
        BatchError::TooManyPending { .. } => {
            Error::new(ErrorKind::TooManyPending, error.to_string()).with_source(error.clone())
        }
        _ => Error::new(ErrorKind::Transport, error.to_string()).with_source(error.clone()),
    }
}

impl Client {
    /// A batched endpoint of this client: [`Batched::load`] asks for one
    /// item, and the ids asked for together go in one request (see
    /// [`BatchSpec`]). The request goes through the client's whole stack, so
    /// it is cached, retried and rate limited like any other.
    pub fn batched(&self, spec: BatchSpec) -> Batched {
        Batched::new(self.clone(), spec)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;
    use tollgate_testkit::{FakeApi, Fault};

    use crate::{BatchSpec, Client, ErrorKind};

    #[tokio::test(start_paused = true)]
    async fn a_load_behind_a_hung_batch_ends_at_the_client_timeout() {
        let api = FakeApi::start().await.expect("fake api");
        api.inject("/metadata", Fault::latency(Duration::from_secs(3600)));
        let client = Client::builder(api.url())
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let metadata = client.batched(BatchSpec::get("/metadata").max_batch(1).max_in_flight(1));
        let started = Instant::now();
        let hung = tokio::spawn({
            let metadata = metadata.clone();
            async move { metadata.load(1).await }
        });
        tokio::task::yield_now().await;
        let behind = metadata.load(2).await.expect_err("times out");
        assert_eq!(behind.kind(), ErrorKind::Timeout, "{behind}");
        assert_eq!(started.elapsed(), Duration::from_secs(2), "not 4 s");
        let hung = hung.await.expect("task").expect_err("times out");
        assert_eq!(hung.kind(), ErrorKind::Timeout);
    }
}
