//! Redis backends for Tollgate (work in progress).
#![deny(missing_docs)]
