//! [`FaultProxy`]: a TCP proxy on loopback that breaks connections on
//! purpose, in front of an upstream such as a [`FakeApi`](crate::FakeApi).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does to one exchange (a request and its response).
///
/// Attach one with [`FaultProxy::inject`] (every exchange, or the next `n`
/// with [`times`](Self::times)), or draw them at random with a
/// [`FaultMix`].
///
/// ```
/// use std::time::Duration;
/// use tollgate_testkit::ProxyFault;
///
/// let slow = ProxyFault::latency(Duration::from_millis(50));
/// let cut = ProxyFault::reset_after(10).times(1);
/// let drip = ProxyFault::trickle(4, Duration::from_millis(10));
/// # let _ = (slow, cut, drip);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyFault {
    kind: FaultKind,
    remaining: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    Latency(Duration),
    ResetAfter(u64),
    CloseBeforeResponse,
    Trickle { bytes: usize, every: Duration },
    StallAfter(u64),
    StallAfterHead,
    Blackhole,
}

impl FaultKind {
    fn index(self) -> usize {
        match self {
            FaultKind::Latency(_) => 0,
            FaultKind::ResetAfter(_) => 1,
            FaultKind::CloseBeforeResponse => 2,
            FaultKind::Trickle { .. } => 3,
            FaultKind::StallAfter(_) | FaultKind::StallAfterHead => 4,
            FaultKind::Blackhole => 5,
        }
    }
}

impl ProxyFault {
    fn new(kind: FaultKind) -> Self {
        ProxyFault {
            kind,
            remaining: None,
        }
    }

    /// Holds the request `delay` before forwarding it to the upstream.
    pub fn latency(delay: Duration) -> Self {
        Self::new(FaultKind::Latency(delay))
    }

    /// Forwards the request, then the first `n` bytes of the answer, then
    /// resets the client's connection (TCP RST). With `n = 0` the upstream
    /// has handled the request but the client gets nothing but the reset.
    ///
    /// The proxy does not parse HTTP: if the answer is shorter than `n`
    /// bytes, the count goes on into the next answer on that connection.
    pub fn reset_after(n: u64) -> Self {
        Self::new(FaultKind::ResetAfter(n))
    }

    /// Forwards the request, then closes the client's connection cleanly
    /// (FIN) when the answer starts, without forwarding any of it: the
    /// upstream handled the request, the client never learns the outcome.
    pub fn close_before_response() -> Self {
        Self::new(FaultKind::CloseBeforeResponse)
    }

    /// Forwards the answer `bytes` bytes at a time (at least 1), waiting
    /// `every` between pieces: a body that trickles.
    pub fn trickle(bytes: usize, every: Duration) -> Self {
        Self::new(FaultKind::Trickle {
            bytes: bytes.max(1),
            every,
        })
    }

    /// Forwards the first `n` bytes of the answer, then nothing more,
    /// keeping the connection open: the client waits for the rest forever.
    pub fn stall_after(n: u64) -> Self {
        Self::new(FaultKind::StallAfter(n))
    }

    /// Forwards the answer's head (up to and including the first blank
    /// line, `\r\n\r\n`), then nothing more, keeping the connection open: a
    /// body that never ends (or never starts).
    pub fn stall_body() -> Self {
        Self::new(FaultKind::StallAfterHead)
    }

    /// Swallows the request and never answers, keeping the connection open:
    /// the upstream never sees it.
    pub fn blackhole() -> Self {
        Self::new(FaultKind::Blackhole)
    }

    /// Applies only to the next `n` exchanges.
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Takes one use; false when used up.
    fn take(&mut self) -> bool {
        match &mut self.remaining {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// Faults drawn at random, each with its own probability, from a seeded
/// generator.
///
/// Each exchange draws once: the first fault whose cumulative probability
/// covers the draw applies, and none does with the probability left over.
/// Probabilities are clamped to `[0, 1]` (NaN is 0); once they add up to 1,
/// later entries are never drawn.
///
/// The sequence of draws is a function of the seed, so one exchange at a
/// time gives the same faults on every run; with concurrent connections the
/// order in which exchanges draw is up to the scheduler, so the total mix is
/// reproducible in distribution but not which request got which fault.
///
/// ```
/// use std::time::Duration;
/// use tollgate_testkit::{FaultMix, ProxyFault};
///
/// let mix = FaultMix::new(42)
///     .with(ProxyFault::reset_after(0), 0.01)
///     .with(ProxyFault::latency(Duration::from_millis(20)), 0.05);
/// # let _ = mix;
/// ```
#[derive(Clone, Debug)]
pub struct FaultMix {
    seed: u64,
    entries: Vec<(FaultKind, f64)>,
}

impl FaultMix {
    /// An empty mix (no faults) drawing from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        FaultMix {
            seed,
            entries: Vec::new(),
        }
    }

    /// Adds `fault` with this probability per exchange (its
    /// [`times`](ProxyFault::times) is ignored).
    pub fn with(mut self, fault: ProxyFault, probability: f64) -> Self {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.entries.push((fault.kind, p));
        self
    }

    fn draw(&self, rng: &mut fastrand::Rng) -> Option<FaultKind> {
        let r = rng.f64();
        let mut cumulative = 0.0;
        for (kind, p) in &self.entries {
            cumulative += p;
            if r < cumulative {
                return Some(*kind);
            }
        }
        None
    }
}

/// What a [`FaultProxy`] has seen and done since it started.
///
/// A fault is counted when it is applied to an exchange (a reset is counted
/// even if the connection ends before its byte count is reached).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Exchanges seen (requests, as the proxy tells them apart).
    pub exchanges: u64,
    /// Exchanges delayed by [`ProxyFault::latency`].
    pub latency: u64,
    /// Exchanges given [`ProxyFault::reset_after`].
    pub resets: u64,
    /// Exchanges given [`ProxyFault::close_before_response`].
    pub closes: u64,
    /// Exchanges given [`ProxyFault::trickle`].
    pub trickles: u64,
    /// Exchanges given [`ProxyFault::stall_after`] or
    /// [`ProxyFault::stall_body`].
    pub stalls: u64,
    /// Exchanges given [`ProxyFault::blackhole`].
    pub blackholes: u64,
    /// Client connections that could not be connected to the upstream
    /// (they are reset at once).
    pub upstream_failures: u64,
}

impl ProxyStats {
    /// Faults applied, of every kind.
    pub fn faults(&self) -> u64 {
        self.latency + self.resets + self.closes + self.trickles + self.stalls + self.blackholes
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    exchanges: AtomicU64,
    /// Indexed by [`FaultKind::index`].
    faults: [AtomicU64; 6],
    upstream_failures: AtomicU64,
}

#[derive(Default)]
struct Plan {
    scripted: Vec<ProxyFault>,
    mix: Option<(FaultMix, fastrand::Rng)>,
}

#[derive(Default)]
struct State {
    counters: Counters,
    plan: Mutex<Plan>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// The fault for a new exchange: the first scripted one not used up,
    /// else a draw from the mix.
    fn next_fault(&self) -> Option<FaultKind> {
        self.counters.exchanges.fetch_add(1, Ordering::Relaxed);
        let kind = {
            let mut plan = lock(&self.plan);
            let scripted = plan
                .scripted
                .iter_mut()
                .find(|f| f.remaining != Some(0))
                .and_then(|f| f.take().then_some(f.kind));
            match scripted {
                Some(kind) => Some(kind),
                None => match &mut plan.mix {
                    Some((mix, rng)) => mix.draw(rng),
                    None => None,
                },
            }
        };
        if let Some(kind) = kind {
            self.counters.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
        kind
    }
}

/// A TCP proxy on `127.0.0.1` that forwards to an upstream address and
/// injects connection-level faults: added latency, a reset after N bytes, a
/// close before the response, trickled answers, answers that stop and never
/// end, and a blackhole; scripted ([`inject`](Self::inject)) or drawn at a
/// seeded rate ([`mix`](Self::mix)), with [counters](Self::stats).
///
/// Where [`FakeApi`](crate::FakeApi)'s faults are HTTP answers, these are
/// what a network does: put the proxy between a client and a `FakeApi` to
/// get both.
///
/// # Exchanges
///
/// The proxy does not parse HTTP. It treats a burst of bytes from the client
/// that arrives after the upstream last spoke (or first on a connection) as
/// a new exchange, and draws a fault for it. For HTTP/1.1 without
/// pipelining, as hyper's client speaks it, that is one request and its
/// response; for HTTP/2 or pipelined requests it is approximate. A fault
/// that breaks or stalls a connection affects that connection only; the
/// others carry on.
///
/// # Time
///
/// Delays use tokio's clock, so tests with paused time run them instantly
/// (loopback I/O is ready before the runtime idles, so paused time stays
/// deterministic on a current-thread runtime).
///
/// The proxy runs on the tokio runtime that started it and stops, closing
/// every connection, when dropped.
///
/// ```
/// use std::time::Duration;
/// use tollgate_testkit::{FakeApi, FaultMix, FaultProxy, ProxyFault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let api = FakeApi::start().await?;
/// let proxy = FaultProxy::start(api.addr()).await?;
/// proxy.inject(ProxyFault::reset_after(0).times(1));
/// proxy.mix(FaultMix::new(7).with(ProxyFault::latency(Duration::from_millis(5)), 0.1));
/// // ... point a client at `proxy.url()`, then read `proxy.stats()`.
/// assert_eq!(proxy.stats().connections, 0);
/// # Ok(())
/// # }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Binds `127.0.0.1` on a free port and forwards each connection to
    /// `upstream`.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept(listener, upstream, Arc::clone(&state)));
        Ok(FaultProxy {
            addr,
            upstream,
            state,
            task,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a fault for the next exchanges (all of them, or the next `n`
    /// with [`ProxyFault::times`]). Scripted faults are used in the order
    /// injected and take precedence over the [mix](Self::mix).
    pub fn inject(&self, fault: ProxyFault) {
        lock(&self.state.plan).scripted.push(fault);
    }

    /// Draws a fault for every exchange no scripted fault applies to,
    /// replacing any earlier mix (and restarting its generator from the
    /// seed).
    pub fn mix(&self, mix: FaultMix) {
        let rng = fastrand::Rng::with_seed(mix.seed);
        lock(&self.state.plan).mix = Some((mix, rng));
    }

    /// Removes every scripted fault and the mix: exchanges from now on pass
    /// through untouched (connections already stalled stay stalled).
    pub fn clear_faults(&self) {
        let mut plan = lock(&self.state.plan);
        plan.scripted.clear();
        plan.mix = None;
    }

    /// Counters since the proxy started.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.state.counters;
        let fault = |i: usize| c.faults[i].load(Ordering::Relaxed);
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            exchanges: c.exchanges.load(Ordering::Relaxed),
            latency: fault(0),
            resets: fault(1),
            closes: fault(2),
            trickles: fault(3),
            stalls: fault(4),
            blackholes: fault(5),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    // Connections live in this set: aborting the accept task drops it, which
    // aborts every connection, so a dropped proxy leaves nothing running.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                state.counters.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(connection(client, upstream, Arc::clone(&state)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Resets a connection: `SO_LINGER` 0, then close, sends a TCP RST.
fn reset(stream: TcpStream) {
    // A zero linger never blocks the thread on close, the reason tokio
    // deprecated `set_linger` for other values; `set_zero_linger` is newer
    // than the tokio version this workspace requires.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// How one connection ended.
enum End {
    /// Close both sides normally.
    Close,
    /// Reset the client.
    Reset,
}

/// One exchange's fault as the response side carries it out.
struct Exchange {
    fault: Option<FaultKind>,
    /// Response bytes forwarded in this exchange.
    forwarded: u64,
    /// Progress through `\r\n\r\n` for [`FaultKind::StallAfterHead`].
    head_match: u8,
}

struct Conn {
    state: Arc<State>,
    exchange: Mutex<Exchange>,
    /// The upstream spoke since the current exchange began: the client's
    /// next bytes start a new one.
    answered: AtomicBool,
    /// Stalled or blackholed: nothing more is forwarded either way.
    dead: AtomicBool,
}

async fn connection(mut client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    let _ = client.set_nodelay(true);
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        state
            .counters
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    };
    let _ = server.set_nodelay(true);
    let conn = Conn {
        state,
        exchange: Mutex::new(Exchange {
            fault: None,
            forwarded: 0,
            head_match: 0,
        }),
        answered: AtomicBool::new(true),
        dead: AtomicBool::new(false),
    };
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let requests = requests(&conn, client_read, server_write);
        let responses = responses(&conn, server_read, client_write);
        tokio::pin!(requests, responses);
        let mut client_done = false;
        loop {
            tokio::select! {
                ok = &mut requests, if !client_done => {
                    client_done = true;
                    // The client is gone (or broke): a dead connection has
                    // nothing more to deliver, and an error ends it all.
                    if !ok || conn.dead.load(Ordering::Relaxed) {
                        break End::Close;
                    }
                }
                end = &mut responses => break end,
            }
        }
    };
    match end {
        End::Reset => reset(client),
        End::Close => drop(client),
    }
}

/// Client to upstream. True when the client closed its side cleanly.
async fn requests(conn: &Conn, mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return true;
            }
            Ok(n) => n,
            Err(_) => return false,
        };
        if conn.dead.load(Ordering::Relaxed) {
            continue;
        }
        if conn.answered.swap(false, Ordering::Relaxed) {
            let fault = conn.state.next_fault();
            {
                let mut ex = lock(&conn.exchange);
                ex.fault = fault;
                ex.forwarded = 0;
                ex.head_match = 0;
            }
            match fault {
                Some(FaultKind::Latency(delay)) => tokio::time::sleep(delay).await,
                Some(FaultKind::Blackhole) => {
                    conn.dead.store(true, Ordering::Relaxed);
                    continue;
                }
                _ => {}
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}

/// What to do with one chunk of the answer.
enum Step {
    /// Forward it whole.
    Forward,
    /// Forward it in pieces of this size, waiting between them.
    Trickle(usize, Duration),
    /// Forward this many bytes of it, then reset the client.
    ResetAfter(usize),
    /// Forward this many bytes of it, then stall.
    StallAfter(usize),
    /// Close the client without forwarding it.
    Close,
}

/// Where the first `\r\n\r\n` ends in `chunk`, carrying the match across
/// chunks in `state` (0 to 4 bytes matched so far).
fn head_end(chunk: &[u8], state: &mut u8) -> Option<usize> {
    const END: &[u8; 4] = b"\r\n\r\n";
    for (i, b) in chunk.iter().enumerate() {
        *state = if *b == END[usize::from(*state)] {
            *state + 1
        } else if *b == b'\r' {
            1
        } else {
            0
        };
        if *state == 4 {
            return Some(i + 1);
        }
    }
    None
}

fn plan_chunk(conn: &Conn, chunk: &[u8]) -> Step {
    let mut ex = lock(&conn.exchange);
    let len = chunk.len() as u64;
    let step = match ex.fault {
        Some(FaultKind::ResetAfter(n)) => {
            let left = n.saturating_sub(ex.forwarded);
            if left < len {
                Step::ResetAfter(usize::try_from(left).unwrap_or(usize::MAX))
            } else {
                Step::Forward
            }
        }
        Some(FaultKind::StallAfter(n)) => {
            let left = n.saturating_sub(ex.forwarded);
            if left < len {
                Step::StallAfter(usize::try_from(left).unwrap_or(usize::MAX))
            } else {
                Step::Forward
            }
        }
        Some(FaultKind::StallAfterHead) => {
            let mut state = ex.head_match;
            let end = head_end(chunk, &mut state);
            ex.head_match = state;
            match end {
                Some(end) => Step::StallAfter(end),
                None => Step::Forward,
            }
        }
        Some(FaultKind::CloseBeforeResponse) => Step::Close,
        Some(FaultKind::Trickle { bytes, every }) => Step::Trickle(bytes, every),
        Some(FaultKind::Latency(_) | FaultKind::Blackhole) | None => Step::Forward,
    };
    ex.forwarded = ex.forwarded.saturating_add(len);
    step
}

/// Upstream to client: carries out the exchange's fault.
async fn responses(conn: &Conn, mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buf).await;
        if conn.dead.load(Ordering::Relaxed) {
            if matches!(read, Ok(n) if n > 0) {
                continue;
            }
            // Whatever the upstream does, a stalled connection stays open
            // and silent until the client gives up.
            return std::future::pending().await;
        }
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                return End::Close;
            }
            Ok(n) => n,
            Err(_) => return End::Reset,
        };
        let chunk = &buf[..n];
        let step = plan_chunk(conn, chunk);
        // Mark the exchange answered before the client can see the answer,
        // so its next request starts a new exchange.
        conn.answered.store(true, Ordering::Relaxed);
        let written = match step {
            Step::Forward => to.write_all(chunk).await,
            Step::Trickle(size, every) => {
                let mut result = Ok(());
                for (i, piece) in chunk.chunks(size).enumerate() {
                    if i > 0 {
                        tokio::time::sleep(every).await;
                    }
                    result = to.write_all(piece).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
            Step::ResetAfter(keep) => {
                let _ = to.write_all(&chunk[..keep]).await;
                let _ = to.flush().await;
                return End::Reset;
            }
            Step::StallAfter(keep) => {
                conn.dead.store(true, Ordering::Relaxed);
                to.write_all(&chunk[..keep]).await
            }
            Step::Close => {
                let _ = to.shutdown().await;
                return End::Close;
            }
        };
        if written.is_err() {
            return End::Close;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_the_blank_line_across_chunks() {
        let mut s = 0;
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r", &mut s), None);
        assert_eq!(head_end(b"\n\r", &mut s), None);
        assert_eq!(head_end(b"\nbody", &mut s), Some(1));
        let mut s = 0;
        assert_eq!(head_end(b"x\r\r\n\r\ny", &mut s), Some(6));
    }

    #[test]
    fn a_mix_draws_each_fault_near_its_rate_and_repeats_with_its_seed() {
        let mix = FaultMix::new(1)
            .with(ProxyFault::reset_after(0), 0.01)
            .with(ProxyFault::blackhole(), 0.1)
            .with(ProxyFault::close_before_response(), f64::NAN);
        let draws = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..100_000).map(|_| mix.draw(&mut rng)).collect::<Vec<_>>()
        };
        let a = draws(1);
        assert_eq!(a, draws(1));
        let count = |k: FaultKind| a.iter().filter(|d| **d == Some(k)).count();
        assert!((800..1200).contains(&count(FaultKind::ResetAfter(0))));
        assert!((9_000..11_000).contains(&count(FaultKind::Blackhole)));
        assert_eq!(count(FaultKind::CloseBeforeResponse), 0);
    }

    #[test]
    fn probabilities_past_one_leave_later_entries_out() {
        let mix = FaultMix::new(3)
            .with(ProxyFault::blackhole(), 7.0)
            .with(ProxyFault::reset_after(1), 1.0);
        let mut rng = fastrand::Rng::with_seed(3);
        assert!((0..1000).all(|_| mix.draw(&mut rng) == Some(FaultKind::Blackhole)));
    }

    #[test]
    fn scripted_faults_run_out_then_the_mix_applies() {
        let state = State::default();
        lock(&state.plan)
            .scripted
            .push(ProxyFault::close_before_response().times(2));
        let mix = FaultMix::new(0).with(ProxyFault::blackhole(), 1.0);
        lock(&state.plan).mix = Some((mix, fastrand::Rng::with_seed(0)));
        assert_eq!(state.next_fault(), Some(FaultKind::CloseBeforeResponse));
        assert_eq!(state.next_fault(), Some(FaultKind::CloseBeforeResponse));
        assert_eq!(state.next_fault(), Some(FaultKind::Blackhole));
        assert_eq!(state.counters.exchanges.load(Ordering::Relaxed), 3);
    }
}
