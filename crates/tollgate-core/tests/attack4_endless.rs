//! Adversary 4: an endless body that uses no memory: one whose every poll
//! is ready with an empty data frame. `read_body` and
//! `ReplayableBody::buffer` loop on it without ever returning `Pending`,
//! so no timer around them (a call's total timeout) can end the call: the
//! task spins on its thread. A guard stops the body after `GUARD` polls
//! with an error, so a failing test ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tollgate_core::{read_body, ReplayableBody};

const GUARD: usize = 2_000_000;

struct EmptyForever {
    polled: Arc<AtomicUsize>,
    hint: SizeHint,
}

impl Body for EmptyForever {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let n = self.polled.fetch_add(1, Ordering::SeqCst);
        if n >= GUARD {
            return Poll::Ready(Some(Err(std::io::Error::other("guard: spun"))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn empty_forever(hint: SizeHint) -> (EmptyForever, Arc<AtomicUsize>) {
    let polled = Arc::default();
    (
        EmptyForever {
            polled: Arc::clone(&polled),
            hint,
        },
        polled,
    )
}

#[tokio::test]

async fn read_body_yields_so_a_timeout_can_end_an_endless_empty_body() {
    let (body, polled) = empty_forever(SizeHint::default());
    let outcome = tokio::time::timeout(Duration::from_millis(50), read_body(body, 1024)).await;
    assert!(
        outcome.is_err(),
        "the timeout never fired: {} polls without a yield, then {:?}",
        polled.load(Ordering::SeqCst),
        outcome.map(|r| r.map(|b| b.len()).map_err(|e| e.to_string()))
    );
}

#[tokio::test]

async fn buffer_yields_so_a_timeout_can_end_an_endless_empty_body() {
    let (body, polled) = empty_forever(SizeHint::with_exact(10));
    let outcome = tokio::time::timeout(
        Duration::from_millis(50),
        ReplayableBody::buffer(body, 1024),
    )
    .await;
    assert!(
        outcome.is_err(),
        "the timeout never fired: {} polls without a yield",
        polled.load(Ordering::SeqCst)
    );
}
