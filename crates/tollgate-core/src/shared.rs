//! One error, handed to many callers: [`SharedError`], and [`chain`], a
//! walk of an error's sources that sees through it.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use tower::BoxError;

/// An error that several callers get a clone of: the requests that waited
/// on one token refresh, the callers of one batched call, the requests
/// coalesced onto one cache miss.
///
/// It is transparent, as an `io::Error` that wraps another is: its `Display`
/// and `Debug` are the error's own, and its [`source`](StdError::source) is
/// the error's own source, so a report that prints a chain prints nothing
/// twice. A walk by `source()` alone therefore steps over the shared error
/// itself (it sees its sources): walk with [`chain`], or ask the
/// `SharedError` directly. The error itself is
/// [`get`](SharedError::get) (or [`downcast_ref`](SharedError::downcast_ref));
/// [`chain`] yields it, so code that walks a chain with [`chain`] finds it
/// as if it were not shared.
///
/// ```
/// use std::io;
/// use tollgate_core::SharedError;
///
/// let shared = SharedError::new(io::Error::from(io::ErrorKind::ConnectionRefused).into());
/// let other_caller = shared.clone();
/// assert_eq!(other_caller.to_string(), shared.to_string());
/// let io = other_caller.downcast_ref::<io::Error>().expect("the error itself");
/// assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
/// // Sharing a shared error does not nest it.
/// let again = SharedError::new(Box::new(shared.clone()) as tower::BoxError);
/// assert!(again.downcast_ref::<io::Error>().is_some());
/// ```
#[derive(Clone)]
pub struct SharedError(Arc<dyn StdError + Send + Sync>);

impl SharedError {
    /// Shares `error`. A boxed [`SharedError`] is shared as it is, never
    /// wrapped twice.
    pub fn new(error: BoxError) -> Self {
        match error.downcast::<SharedError>() {
            Ok(shared) => *shared,
            Err(error) => SharedError(Arc::from(error)),
        }
    }

    /// The error itself.
    pub fn get(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }

    /// The error itself, if it is a `T`.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// Whether the error itself is a `T`.
    pub fn is<T: StdError + 'static>(&self) -> bool {
        self.0.is::<T>()
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Every error in `error`'s chain, `error` first, seeing through the two
/// transparent wrappers that `source()` alone skips: a [`SharedError`]
/// (followed by the error it shares) and an `io::Error` that wraps another
/// (followed by that error).
///
/// ```
/// use std::io;
/// use tollgate_core::{chain, SharedError};
///
/// #[derive(Debug)]
/// struct Refused;
/// impl std::fmt::Display for Refused {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("refused") }
/// }
/// impl std::error::Error for Refused {}
///
/// let err = SharedError::new(io::Error::other(Refused).into());
/// assert!(chain(&err).any(|e| e.is::<Refused>()));
/// // `source()` alone never reaches it.
/// assert!(std::error::Error::source(&err).is_none());
/// ```
pub fn chain<'a>(error: &'a (dyn StdError + 'static)) -> Chain<'a> {
    Chain {
        next: Some(error),
        steps: 0,
    }
}

/// The iterator of [`chain`].
#[derive(Debug, Clone)]
pub struct Chain<'a> {
    next: Option<&'a (dyn StdError + 'static)>,
    steps: usize,
}

/// A chain longer than this is cut short (a cycle, or a pathological one).
const MAX_CHAIN: usize = 64;

impl<'a> Iterator for Chain<'a> {
    type Item = &'a (dyn StdError + 'static);

    fn next(&mut self) -> Option<Self::Item> {
        let current = self.next.take()?;
        self.steps += 1;
        if self.steps > MAX_CHAIN {
            return None;
        }
        self.next = if let Some(shared) = current.downcast_ref::<SharedError>() {
            Some(shared.get() as &(dyn StdError + 'static))
        } else if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner as &(dyn StdError + 'static))
        } else {
            current.source()
        };
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("leaf")
        }
    }
    impl StdError for Leaf {}

    #[derive(Debug)]
    struct Outer(SharedError);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_shared_error_shows_as_the_error_it_shares() {
        let shared = SharedError::new(std::io::Error::other(Leaf).into());
        assert_eq!(shared.to_string(), "leaf");
        assert_eq!(
            format!("{shared:?}"),
            format!("{:?}", std::io::Error::other(Leaf))
        );
        assert!(shared.is::<std::io::Error>());
    }

    #[test]
    fn the_chain_sees_through_shared_and_io_errors() {
        let outer = Outer(SharedError::new(std::io::Error::other(Leaf).into()));
        let names: Vec<String> = chain(&outer).map(ToString::to_string).collect();
        assert_eq!(names, ["outer", "leaf", "leaf", "leaf"]);
        assert!(chain(&outer).any(|e| e.is::<std::io::Error>()));
        assert!(chain(&outer).any(|e| e.is::<Leaf>()));
    }

    #[test]
    fn sharing_twice_does_not_nest() {
        let once = SharedError::new(Box::new(Leaf));
        let twice = SharedError::new(Box::new(once.clone()));
        assert!(twice.is::<Leaf>());
        let boxed = SharedError::new(Box::new(once) as BoxError);
        assert!(boxed.is::<Leaf>());
    }
}
