//! A small curl-like tool over the Tollgate facade.
//!
//! ```text
//! cargo run --example fetch -- [-X METHOD] [-H 'Name: value']...
//!     [--json BODY | --form k=v... | -F name=value | -F name=@file]...
//!     [--bearer TOKEN] [--max-redirects N] [--proxy URL] [--cacert FILE]
//!     [--http2] [-o FILE] [--compressed] [-v] URL
//! ```
//!
//! Prints the status, the final URL, the redirects followed and the
//! response headers (sensitive ones redacted) on stderr, then the decoded
//! body on stdout, or streams it into `-o FILE` with a progress bar on
//! stderr when stderr is a terminal. Exits 0 for a 2xx or 3xx, 22 (as
//! curl's `--fail`) for a 4xx or 5xx, 1 for an error (its kind printed).
//!
//! - `--form k=v` sends `application/x-www-form-urlencoded`; `-F` sends
//!   `multipart/form-data`, a file part (`-F name=@path`) streamed from
//!   disk.
//! - `--compressed` asks for gzip, deflate, brotli and zstd and decodes
//!   them; without it nothing is asked and the body is as sent.
//! - Redirects are followed (10 at most unless `--max-redirects`), to any
//!   origin: credentials (`--bearer`, `Authorization`, `Cookie`) are
//!   dropped once the chain leaves the URL's origin.
//! - `--proxy` takes `http://`, `socks5://` or `socks5h://`, credentials in
//!   the URL kept for the proxy only; `--cacert` a PEM file of CA
//!   certificates trusted besides Mozilla's roots.
//! - `-v` also prints the call's record (attempts, waits, timings).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints"
)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use tollgate::{Client, Error, Proxy, RedirectPolicy};

const USAGE: &str = "usage: fetch [-X METHOD] [-H 'Name: value']... \
[--json BODY | --form k=v... | -F name=value | -F name=@file]... [--bearer TOKEN] \
[--max-redirects N] [--proxy URL] [--cacert FILE] [--http2] [-o FILE] [--compressed] [-v] URL";

/// Response headers whose values are never printed.
const SENSITIVE: &[&str] = &[
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "cookie",
    "proxy-authenticate",
    "x-api-key",
];

#[derive(Default)]
struct Args {
    method: Option<String>,
    headers: Vec<(String, String)>,
    json: Option<String>,
    form: Vec<(String, String)>,
    multipart: Vec<(String, Part)>,
    bearer: Option<String>,
    max_redirects: Option<u32>,
    proxy: Option<String>,
    cacert: Option<PathBuf>,
    http2: bool,
    output: Option<PathBuf>,
    compressed: bool,
    verbose: bool,
    url: Option<String>,
}

enum Part {
    Text(String),
    File(PathBuf),
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-X" | "--request" => out.method = Some(value(&mut args, &arg)?),
            "-H" | "--header" => {
                let header = value(&mut args, &arg)?;
                let (name, v) = header
                    .split_once(':')
                    .ok_or_else(|| format!("header `{header}` is not `Name: value`"))?;
                out.headers
                    .push((name.trim().to_owned(), v.trim().to_owned()));
            }
            "--json" => out.json = Some(value(&mut args, &arg)?),
            "--form" | "-d" => {
                let pair = value(&mut args, &arg)?;
                let (k, v) = pair.split_once('=').unwrap_or((&pair, ""));
                out.form.push((k.to_owned(), v.to_owned()));
            }
            "-F" => {
                let pair = value(&mut args, &arg)?;
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("-F `{pair}` is not `name=value` or `name=@file`"))?;
                let part = match v.strip_prefix('@') {
                    Some(path) => Part::File(PathBuf::from(path)),
                    None => Part::Text(v.to_owned()),
                };
                out.multipart.push((k.to_owned(), part));
            }
            "--bearer" => out.bearer = Some(value(&mut args, &arg)?),
            "--max-redirects" => {
                let n = value(&mut args, &arg)?;
                out.max_redirects = Some(
                    n.parse()
                        .map_err(|_| format!("--max-redirects `{n}` is not a number"))?,
                );
            }
            "--proxy" | "-x" => out.proxy = Some(value(&mut args, &arg)?),
            "--cacert" => out.cacert = Some(PathBuf::from(value(&mut args, &arg)?)),
            "--http2" => out.http2 = true,
            "-o" | "--output" => out.output = Some(PathBuf::from(value(&mut args, &arg)?)),
            "--compressed" => out.compressed = true,
            "-v" | "--verbose" => out.verbose = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option `{flag}`"))
            }
            _ if out.url.is_none() => out.url = Some(arg),
            _ => return Err(format!("a second URL `{arg}`")),
        }
    }
    let bodies = usize::from(out.json.is_some())
        + usize::from(!out.form.is_empty())
        + usize::from(!out.multipart.is_empty());
    if bodies > 1 {
        return Err("--json, --form and -F are one body each: give one of them".into());
    }
    if out.url.is_none() {
        return Err("no URL".into());
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fetch: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(Failure::Call(e)) => {
            eprintln!("fetch: {:?}: {e}", e.kind());
            ExitCode::FAILURE
        }
        Err(Failure::Other(e)) => {
            eprintln!("fetch: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Call(Error),
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Call(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.to_string())
    }
}

async fn run(args: Args) -> Result<ExitCode, Failure> {
    let url = args.url.clone().unwrap_or_default();
    let policy = match args.max_redirects {
        Some(0) => RedirectPolicy::none(),
        Some(n) => RedirectPolicy::limited(n).allow_any_origin(),
        None => RedirectPolicy::default().allow_any_origin(),
    };
    let mut builder = Client::builder_without_base()
        .redirect(policy)
        .timeout(Duration::from_secs(300))
        .max_response_body(256 << 20)
        .gzip(args.compressed)
        .deflate(args.compressed)
        .brotli(args.compressed)
        .zstd(args.compressed);
    if args.http2 && url.starts_with("http://") {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(proxy) = &args.proxy {
        builder = builder.proxy(Proxy::all(proxy)?);
    }
    if let Some(path) = &args.cacert {
        let pem = std::fs::read(path)
            .map_err(|e| Failure::Other(format!("--cacert {}: {e}", path.display())))?;
        builder = builder.add_root_certificates_pem(&pem)?;
    }
    let client = builder.build()?;

    let method = args.method.clone().unwrap_or_else(|| {
        if args.json.is_some() || !args.form.is_empty() || !args.multipart.is_empty() {
            "POST".to_owned()
        } else {
            "GET".to_owned()
        }
    });
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| Failure::Other(format!("`{method}` is not an HTTP method")))?;
    let mut request = client.request(method, url);
    for (name, value) in &args.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    if let Some(token) = &args.bearer {
        request = request.bearer_auth(token);
    }
    if let Some(json) = &args.json {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Failure::Other(format!("--json is not JSON: {e}")))?;
        request = request.json(&value);
    }
    if !args.form.is_empty() {
        request = request.form(&args.form);
    }
    if !args.multipart.is_empty() {
        let mut form = tollgate::multipart::Form::new();
        for (name, part) in args.multipart {
            form = match part {
                Part::Text(text) => form.text(name, text),
                Part::File(path) => form.part(name, tollgate::multipart::Part::file(&path).await?),
            };
        }
        request = request.multipart(form);
    }

    let started = Instant::now();
    let mut response = request.send_streaming().await?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "< {:?} {}", response.version(), response.status())?;
    writeln!(err, "< final URL: {}", response.url())?;
    writeln!(err, "< redirects: {}", response.redirects())?;
    for (name, value) in response.headers() {
        let shown = if value.is_sensitive() || SENSITIVE.contains(&name.as_str()) {
            "[redacted]".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        writeln!(err, "< {name}: {shown}")?;
    }
    drop(err);
    let status = response.status();

    let total = response.content_length();
    let mut received: u64 = 0;
    match &args.output {
        Some(path) => {
            let mut file = tokio::fs::File::create(path)
                .await
                .map_err(|e| Failure::Other(format!("-o {}: {e}", path.display())))?;
            let progress = std::io::stderr().is_terminal();
            let mut last = Instant::now();
            while let Some(chunk) = response.chunk().await? {
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
                received += chunk.len() as u64;
                if progress && last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    draw_progress(received, total, started.elapsed());
                }
            }
            tokio::io::AsyncWriteExt::flush(&mut file).await?;
            if progress {
                draw_progress(received, total, started.elapsed());
                eprintln!();
            }
            eprintln!("wrote {received} bytes to {}", path.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = response.chunk().await? {
                received += chunk.len() as u64;
                out.write_all(&chunk)?;
            }
            out.flush()?;
        }
    }
    if args.verbose {
        eprintln!(
            "* {received} bytes in {:.2?}; {:?}",
            started.elapsed(),
            response.summary()
        );
    }
    Ok(if status.is_client_error() || status.is_server_error() {
        ExitCode::from(22)
    } else {
        ExitCode::SUCCESS
    })
}

/// One line on stderr, redrawn in place: bytes, percent when the length is
/// known, and the rate.
fn draw_progress(received: u64, total: Option<u64>, elapsed: Duration) {
    let rate = received as f64 / elapsed.as_secs_f64().max(1e-3) / 1e6;
    match total {
        Some(total) if total > 0 => {
            let done = (received.min(total) * 30 / total) as usize;
            eprint!(
                "\r[{}{}] {:>5.1}% {received}/{total} bytes {rate:.1} MB/s",
                "#".repeat(done),
                " ".repeat(30 - done),
                received as f64 * 100.0 / total as f64
            );
        }
        _ => eprint!("\r{received} bytes {rate:.1} MB/s"),
    }
}

#[cfg(test)]
mod tests {
    //! `cargo test --example fetch`: the tool against the testkit's FakeApi
    //! over loopback.
    use super::*;
    use tollgate_testkit::FakeApi;

    fn args(list: &[&str]) -> Args {
        parse(list.iter().map(|s| (*s).to_owned())).expect("valid arguments")
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tollgate-fetch-{}-{name}", std::process::id()))
    }

    async fn exit(list: &[&str]) -> ExitCode {
        match run(args(list)).await {
            Ok(code) => code,
            Err(Failure::Call(e)) => panic!("{list:?}: {e}"),
            Err(Failure::Other(e)) => panic!("{list:?}: {e}"),
        }
    }

    #[tokio::test]
    async fn a_download_streams_into_the_file_and_a_404_exits_22() {
        let api = FakeApi::start().await.expect("api");
        let out = temp("huge");
        let url = format!("{}/huge?size=3000000", api.url());
        let code = exit(&["-o", out.to_str().expect("utf-8"), &url]).await;
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(std::fs::metadata(&out).expect("written").len(), 3_000_000);
        let _ = std::fs::remove_file(&out);
        let missing = format!("{}/posts/9999", api.url());
        assert_eq!(exit(&[&missing]).await, ExitCode::from(22));
    }

    #[tokio::test]
    async fn redirects_are_followed_and_limited() {
        let api = FakeApi::start().await.expect("api");
        let url = format!("{}/redirect/3", api.url());
        assert_eq!(exit(&[&url]).await, ExitCode::SUCCESS);
        match run(args(&["--max-redirects", "2", &url])).await {
            Err(Failure::Call(e)) => assert!(e.is_redirect(), "{e}"),
            _ => panic!("three hops past a limit of two"),
        }
    }

    #[tokio::test]
    async fn forms_json_and_a_file_part_reach_the_server() {
        let api = FakeApi::start().await.expect("api");
        let file = temp("upload");
        std::fs::write(&file, vec![b'x'; 100_000]).expect("file");
        let out = temp("echo");
        let multipart = format!("{}/multipart", api.url());
        let code = exit(&[
            "-F",
            "note=hello",
            "-F",
            &format!("doc=@{}", file.display()),
            "-o",
            out.to_str().expect("utf-8"),
            &multipart,
        ])
        .await;
        assert_eq!(code, ExitCode::SUCCESS);
        let echo: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).expect("echo")).expect("json");
        let parts = echo["parts"].as_array().expect("parts");
        assert_eq!(parts.len(), 2, "{echo}");
        assert_eq!(parts[1]["name"], "doc");
        assert_eq!(parts[1]["size"], 100_000);
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&out);

        let anything = format!("{}/anything/form", api.url());
        let out = temp("form");
        let code = exit(&[
            "--form",
            "a=1",
            "--form",
            "b=two words",
            "-o",
            out.to_str().expect("utf-8"),
            &anything,
        ])
        .await;
        assert_eq!(code, ExitCode::SUCCESS);
        let echo = String::from_utf8(std::fs::read(&out).expect("echo")).expect("utf-8");
        assert!(echo.contains("a=1&b=two+words"), "{echo}");
        assert!(echo.contains("POST"), "{echo}");
        let _ = std::fs::remove_file(&out);

        let posts = format!("{}/posts", api.url());
        assert_eq!(
            exit(&["--json", r#"{"title":"t"}"#, &posts]).await,
            ExitCode::SUCCESS
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--json", "{}", "--form", "a=b", "http://x"][..],
            &["-H", "no colon", "http://x"],
            &["--max-redirects", "many", "http://x"],
            &["--nope", "http://x"],
            &[],
            &["http://x", "http://y"],
        ] {
            assert!(
                parse(bad.iter().map(|s| (*s).to_owned())).is_err(),
                "{bad:?}"
            );
        }
    }
}
