//! Request batching as a tower layer.
//!
//! An endpoint that accepts many ids at once (`/metadata?id=1&id=2&id=3`) is
//! often rate limited per call, not per id, while the calling code asks for
//! one id at a time. [`BatchLayer`] turns a service of batches into a
//! service of single items: callers keep asking for one item, and the
//! upstream sees one call per batch. See [`BatchLayer`] for the rules and an
//! example; the `tollgate` facade declares a batched endpoint over HTTP with
//! `Client::batched`.
#![deny(missing_docs)]

mod batch;
mod error;

pub use batch::{Batch, BatchLayer, ResponseFuture, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_PENDING};
pub use error::{BatchError, SharedError};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
