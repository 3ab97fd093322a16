//! Property tests of every parser that takes outside input: the short-code
//! check, target URL normalisation, the Redis value codec, CSV rows, the
//! config file and request framing. They stand in for `cargo fuzz`, which
//! needs a nightly toolchain this project's machines do not have.
//!
//! Each property runs `PROPTEST_CASES` cases (default here 2,000 per
//! property, a few seconds in all); `fuzz/run.sh` runs them far longer and
//! records the figures in `fuzz/RESULTS.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use edgelink_core::code::{check_code, is_reserved, is_valid_code, MAX_CODE_LEN};
use edgelink_core::config::{Config, StorageMode};
use edgelink_core::import::parse_row;
use edgelink_core::link::{from_unix, normalize_target};
use edgelink_core::store::codec;
use edgelink_core::{Link, RedirectStatus};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that look like URLs often enough to get past the parser: a
/// scheme (mostly good), `://`, a host (sometimes Unicode, sometimes with
/// credentials or a port), then any mix of URL text, Unicode, percent
/// escapes and, now and then, control characters and whitespace.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        6 => prop_oneof![Just("http"), Just("https"), Just("HTTPS")],
        1 => prop_oneof![Just("ftp"), Just("javascript"), Just("data"), Just("")],
    ];
    let host = prop_oneof![
        6 => "[a-z0-9-]{1,10}(\\.[a-z]{2,5}){0,2}",
        2 => "\\PC{1,6}\\.[a-z]{2,3}",
        1 => "[a-z]{1,5}:[a-z]{0,5}@[a-z]{1,8}\\.com",
        1 => "\\[[0-9a-f:]{2,12}\\]",
        1 => "[a-z]{1,8}\\.com:[0-9]{1,6}",
    ];
    let piece = prop_oneof![
        6 => "/[a-zA-Z0-9._~-]{0,12}",
        3 => "[/?#&=%:@!$'()*+,;~]{1,4}",
        3 => "\\PC{1,4}",
        2 => "%[0-9a-fA-F]{2}",
        1 => "%0[dDaA0]",
        1 => "[\\x00-\\x1f\\x7f\\r\\n\\t ]",
    ];
    (scheme, host, prop::collection::vec(piece, 0..8))
        .prop_map(|(scheme, host, pieces)| format!("{scheme}://{host}{}", pieces.concat()))
}

fn any_target() -> impl Strategy<Value = String> {
    prop_oneof![url_like(), any::<String>()]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_code_is_accepted_only_when_it_is_safe(code in prop_oneof!["[A-Za-z0-9_-]{0,70}", any::<String>()]) {
        match check_code(&code) {
            Ok(()) => {
                prop_assert!(is_valid_code(&code));
                prop_assert!(!is_reserved(&code));
                prop_assert!((1..=MAX_CODE_LEN).contains(&code.len()));
                prop_assert!(code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            }
            Err(_) => prop_assert!(!is_valid_code(&code) || is_reserved(&code)),
        }
    }

    /// The property the edge relies on: a normalised target is always a
    /// safe `Location` value and an http(s) URL, and normalising is stable.
    #[test]
    fn a_normalised_target_is_a_safe_location(raw in any_target()) {
        if let Ok(target) = normalize_target(&raw) {
            prop_assert!(target.is_ascii(), "raw non-ASCII in {target:?}");
            prop_assert!(!target.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0 || b.is_ascii_control()),
                "control byte in {target:?}");
            prop_assert!(http::HeaderValue::from_str(&target).is_ok());
            prop_assert!(target.starts_with("http://") || target.starts_with("https://"), "{target:?}");
            let url = url::Url::parse(&target).unwrap();
            prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()));
            prop_assert!(url.username().is_empty() && url.password().is_none());
            prop_assert_eq!(normalize_target(&target), Ok(target.clone()));
        }
    }

    #[test]
    fn the_redis_codec_round_trips_and_never_panics_on_garbage(
        code in "[A-Za-z0-9_-]{1,64}",
        raw in url_like(),
        status in prop_oneof![Just(301u16), Just(302), Just(307), Just(308)],
        created in 0i64..4_000_000_000,
        expires in prop::option::of(0i64..4_000_000_000),
        disabled in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = codec::decode(&code, &garbage);
        if is_reserved(&code) {
            return Ok(());
        }
        let Ok(mut link) = Link::new(
            &code,
            &raw,
            RedirectStatus::from_code(status).unwrap(),
            from_unix(created).unwrap(),
            expires.and_then(from_unix),
        ) else {
            return Ok(());
        };
        link.disabled = disabled;
        let bytes = codec::encode(&link);
        prop_assert_eq!(codec::decode(&code, &bytes), Ok(link));
        // Any cut of a valid value is refused or decodes; never a panic.
        for cut in 0..bytes.len() {
            let _ = codec::decode(&code, &bytes[..cut]);
        }
    }

    #[test]
    fn csv_rows_parse_or_say_why(input in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(input.as_slice());
        for record in reader.records() {
            let Ok(record) = record else { continue };
            match parse_row(&record, RedirectStatus::Found) {
                Ok(link) => {
                    prop_assert!(check_code(&link.code).is_ok());
                    prop_assert_eq!(normalize_target(&link.target), Ok(link.target.clone()));
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }
    }

    #[test]
    fn csv_rows_built_from_parts_parse_exactly(
        code in "[A-Za-z0-9_-]{1,20}",
        url in url_like(),
        status in prop_oneof![Just(String::new()), "30[1278]", "[0-9]{1,4}"],
        expires in prop_oneof![Just(String::new()), Just("2031-01-02T03:04:05Z".to_owned()), "\\PC{0,8}"],
    ) {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record([&code, &url, &status, &expires]).unwrap();
        let bytes = writer.into_inner().unwrap();
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes.as_slice());
        let record = reader.records().next().unwrap().unwrap();
        let parsed = parse_row(&record, RedirectStatus::Found);
        let expect_ok = check_code(&code).is_ok()
            && normalize_target(&url).is_ok()
            && (status.is_empty() || status.parse().ok().and_then(RedirectStatus::from_code).is_some())
            && (expires.is_empty() || edgelink_core::link::parse_rfc3339(&expires).is_ok());
        prop_assert_eq!(parsed.is_ok(), expect_ok, "{:?}", parsed);
    }

    /// Any TOML (or not-TOML) text: loading and validating never panics.
    #[test]
    fn the_config_parser_never_panics(text in prop_oneof![
        any::<String>(),
        config_like(),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let env = std::collections::BTreeMap::new();
        if let Ok(config) = Config::load(Some(&path), &env) {
            let _ = config.validate_for(StorageMode::Embedded);
            let _ = config.validate_for(StorageMode::Distributed);
        }
    }
}

/// TOML whose sections and keys are real, with values of any type.
fn config_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("server.max_connections"),
        Just("server.listen"),
        Just("cache.ttl_secs"),
        Just("limits.max_uri_bytes"),
        Just("limits.create_per_sec"),
        Just("limits.trusted_proxies"),
        Just("proxy.upstreams"),
        Just("proxy.timeout_ms"),
        Just("tls.redirect_listen"),
        Just("redis.key_prefix"),
        Just("keypool.key_length"),
        Just("origin.blocked_domains"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec("\\PC{0,12}", 0..3).prop_map(|v| format!("{v:?}")),
        Just("true".to_owned()),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("[\"http://127.0.0.1:1\", \"10.0.0.0/99\"]".to_owned()),
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| {
                let (section, key) = k.split_once('.').unwrap();
                format!("[{section}]\n{key} = {v}\n")
            })
            .collect()
    })
}

/// The generators reach both sides of the URL checks (a property that only
/// ever sees rejected input proves nothing).
#[test]
fn url_like_strings_reach_accepted_and_refused_targets() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = url_like();
    let (mut ok, mut non_ascii_in, mut refused) = (0, 0, 0);
    for _ in 0..2_000 {
        let raw = strategy.new_tree(&mut runner).unwrap().current();
        match normalize_target(&raw) {
            Ok(_) => {
                ok += 1;
                non_ascii_in += usize::from(!raw.is_ascii());
            }
            Err(_) => refused += 1,
        }
    }
    assert!(ok >= 200, "accepted {ok} of 2000");
    assert!(refused >= 200, "refused {refused} of 2000");
    assert!(
        non_ascii_in >= 20,
        "accepted with non-ASCII input: {non_ascii_in}"
    );
}
