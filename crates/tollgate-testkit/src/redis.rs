//! [`RedisServer`]: a real `redis-server` on a free loopback port, started
//! and stopped by a test.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
// A real process starts in real time: paused tokio time cannot wait for it,
// so the start-up wait is on the wall clock (bounded, 10 s).
use std::time::Duration;
#[allow(clippy::disallowed_types)]
use std::time::Instant;

/// How a missing `redis-server` is explained: tests that need one fail with
/// this, never skip.
pub const HOW_TO_GET_REDIS: &str = "redis-server was not found on the PATH (or in \
TOLLGATE_REDIS_SERVER): install Debian's package with `sudo apt-get install -y redis-server` \
(scripts/test does this itself when it can)";

/// A `redis-server` process of the test's own, on `127.0.0.1` and a port
/// that was free, with no persistence: nothing of it outlives the test.
///
/// It is killed when dropped. [`stop`](Self::stop) and
/// [`restart`](Self::restart) (same port, empty data) let a test take Redis
/// away under load and bring it back.
///
/// ```no_run
/// use tollgate_testkit::RedisServer;
///
/// let redis = RedisServer::start()?;
/// let url = redis.url(); // redis://127.0.0.1:PORT
/// # let _ = url;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The certificate and key files of a TLS server, in a directory of
    /// its own (removed on drop).
    tls: Option<PathBuf>,
}

impl RedisServer {
    /// The `redis-server` binary: `TOLLGATE_REDIS_SERVER`, else the first on
    /// the `PATH`.
    ///
    /// # Errors
    ///
    /// `NotFound`, saying how to install it ([`HOW_TO_GET_REDIS`]).
    pub fn binary() -> io::Result<PathBuf> {
        if let Some(path) = std::env::var_os("TOLLGATE_REDIS_SERVER") {
            return Ok(PathBuf::from(path));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, HOW_TO_GET_REDIS))
    }

    /// Starts a server on a free loopback port and waits until it accepts
    /// connections (at most 10 s).
    ///
    /// # Errors
    ///
    /// No `redis-server` ([`HOW_TO_GET_REDIS`]), or it would not start.
    pub fn start() -> io::Result<RedisServer> {
        let binary = Self::binary()?;
        let mut last = None;
        // Another process may take the port between our probe and Redis's
        // bind: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                child: None,
                tls: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// Starts a server that speaks only TLS (no client certificates asked),
    /// with the PEM certificate chain and key given (a test makes them,
    /// with rcgen say, for `127.0.0.1`).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), or the files could not be written.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> io::Result<RedisServer> {
        let binary = Self::binary()?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let dir = std::env::temp_dir()
                .join(format!("tollgate-redis-tls-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cert.pem"), cert_pem)?;
            std::fs::write(dir.join("key.pem"), key_pem)?;
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                child: None,
                tls: Some(dir),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients), as a
    /// crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same port, empty (after
    /// [`stop`](Self::stop); a running one is stopped first).
    ///
    /// # Errors
    ///
    /// It would not start (the port was taken meanwhile, say).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
    fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new(&self.binary);
        match &self.tls {
            Some(dir) => {
                let cert = dir.join("cert.pem");
                let key = dir.join("key.pem");
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        let mut child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(io::ErrorKind::NotFound, HOW_TO_GET_REDIS)
                } else {
                    e
                }
            })?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                )));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not accept within 10 s",
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.tls.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn ping(addr: SocketAddr) -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn a_server_starts_answers_stops_and_restarts_on_its_port() {
        let mut redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
        assert_eq!(ping(redis.addr()).expect("ping"), "+PONG\r\n");
        redis.stop();
        assert!(!redis.is_running());
        assert!(ping(redis.addr()).is_err(), "stopped means gone");
        redis.restart().expect("restart");
        assert_eq!(ping(redis.addr()).expect("ping"), "+PONG\r\n");
    }
}
