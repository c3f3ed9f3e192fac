//! Endpoint specs: `ClientBuilder::endpoints_json` and `endpoints_toml` on
//! arbitrary text, then each declared endpoint called (through an
//! in-process transport) with parameters taken from the input.
//!
//! Invariants: never panics (timeouts up to `u64::MAX` ms included); a spec
//! either builds or is an `ErrorKind::Builder`; every name the spec declares
//! is callable, and its URL stays on the base's origin and under its path
//! (unless its path is an absolute URL), with no dot segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::ErrorKind;

#[path = "support.rs"]
mod support;

/// The input: a byte whose low bit chooses TOML, then NUL-separated text:
/// the spec, then parameter names and values in turn (easy to seed, see
/// `fuzz/seeds/endpoint_spec`).
struct Input {
    toml: bool,
    spec: String,
    params: Vec<(String, String)>,
}

fn names(input: &Input) -> Vec<String> {
    if input.toml {
        toml::from_str::<toml::Table>(&input.spec)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    } else {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&input.spec)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn path_of(input: &Input, name: &str) -> Option<String> {
    let value = if input.toml {
        let t: toml::Table = toml::from_str(&input.spec).ok()?;
        serde_json::to_value(t.get(name)?).ok()?
    } else {
        let m: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&input.spec).ok()?;
        m.get(name)?.clone()
    };
    match value {
        serde_json::Value::String(s) => Some(s.trim().split_once(' ')?.1.trim().to_owned()),
        serde_json::Value::Object(o) => o.get("path")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.split('\0');
    let spec = parts.next().unwrap_or_default().to_owned();
    let mut params = Vec::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        params.push((k.to_owned(), v.to_owned()));
    }
    let input = Input {
        toml: kind & 1 == 1,
        spec,
        params,
    };
    let (base, base_path) = support::BASES[1];
    let (client, seen) = support::try_client(base, |b| {
        if input.toml {
            b.endpoints_toml(&input.spec)
        } else {
            b.endpoints_json(&input.spec)
        }
    });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Builder, "{e}");
            return;
        }
    };
    for name in names(&input) {
        assert!(
            client.endpoint(&name).is_some(),
            "declared `{name}` is not callable"
        );
        let mut request = client.call(&name);
        for (k, v) in input.params.iter().take(3) {
            request = request.path_param(k.as_str(), v);
        }
        *seen.lock().expect("lock") = None;
        let result = support::block_on(request.send());
        let Some(uri) = seen.lock().expect("lock").take() else {
            assert!(result.is_err(), "a response without a request");
            continue;
        };
        let template = path_of(&input, &name).unwrap_or_default();
        support::check_uri(&uri, base_path, &template);
    }
});
