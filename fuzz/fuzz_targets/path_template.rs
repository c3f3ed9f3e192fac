//! Path templates: `RequestBuilder` path + `path_param`, joined under a
//! client's base URL and handed to an in-process transport (nothing is
//! sent anywhere).
//!
//! Invariants: never panics; the URL the transport receives is on the base
//! URL's origin; unless the template itself is an absolute URL (allowed for
//! the base's own origin), its path stays under the base path; no segment
//! is `.` or `..`, in any spelling; a parameter value never adds a segment.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;

/// The input: a byte choosing the base URL, then NUL-separated text: the
/// template, then parameter names and values in turn (easy to seed, see
/// `fuzz/seeds/path_template`).
struct Input {
    base: u8,
    template: String,
    params: Vec<(String, String)>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&base, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or_default().to_owned();
    let mut params = Vec::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        params.push((k.to_owned(), v.to_owned()));
    }
    let input = Input {
        base,
        template,
        params,
    };
    let (base, base_path) = support::BASES[usize::from(input.base) % support::BASES.len()];
    let (client, seen) = support::client(base, |b| b);
    let mut request = client.get(input.template.as_str());
    for (name, value) in input.params.iter().take(4) {
        request = request.path_param(name.as_str(), value);
    }
    let result = support::block_on(request.send());
    let Some(uri) = seen.lock().expect("lock").take() else {
        assert!(result.is_err(), "a response without a request");
        return;
    };
    support::check_uri(&uri, base_path, &input.template);
    // A value used as a parameter is one segment: the path has as many
    // slashes as the base path, the joining one, and the template's own
    // outside its placeholders.
    let t = &input.template;
    if !t.is_empty() && !support::is_absolute(t) && !t.contains(['?', '#']) {
        let mut depth = 0u32;
        let mut own = 0;
        for c in t.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                '/' if depth == 0 => own += 1,
                _ => {}
            }
        }
        let joining = usize::from(!t.starts_with('/'));
        let expected = base_path.matches('/').count() + joining + own;
        assert_eq!(
            uri.path().matches('/').count(),
            expected,
            "{t:?} filled as {uri}"
        );
    }
});
