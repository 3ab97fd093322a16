use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid_for_embedded_mode() {
    Config::default()
        .validate_for(StorageMode::Embedded)
        .unwrap();
}

#[test]
fn distributed_mode_needs_postgres() {
    let err = Config::default()
        .validate_for(StorageMode::Distributed)
        .unwrap_err();
    assert!(
        err.to_string().contains("postgres.url is required"),
        "{err}"
    );
}

#[test]
fn file_then_env_override() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[cache]\nttl_secs = 60\n[redis]\nkey_prefix = \"file:\"\n",
    )
    .unwrap();
    let cfg = Config::load(
        Some(&path),
        &env(&[
            ("EDGELINK_CACHE_TTL_SECS", "90"),
            ("EDGELINK_POSTGRES_URL", "postgres://u@127.0.0.1/db"),
            ("EDGELINK_SERVER_LISTEN", "127.0.0.1:1234"),
            ("EDGELINK_ADMIN_TOKEN", "s3cret-token-0123456789"),
            ("EDGELINK_KEYPOOL_KEY_LENGTH", "8"),
            ("EDGELINK_TRACE_LEVEL", "not ours, ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.admin.token.as_deref(), Some("s3cret-token-0123456789"));
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "the token never shows in Debug output"
    );
    assert_eq!(cfg.keypool.key_length, 8);
    assert_eq!(cfg.cache.ttl_secs, 90);
    assert_eq!(cfg.redis.key_prefix, "file:");
    assert_eq!(
        cfg.postgres.url.as_deref(),
        Some("postgres://u@127.0.0.1/db")
    );
    assert_eq!(cfg.server.listen, "127.0.0.1:1234".parse().unwrap());
    cfg.validate_for(StorageMode::Distributed).unwrap();
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let e = Config::load(None, &env(&[("EDGELINK_CACHE_TTL", "5")])).unwrap_err();
    assert!(e.to_string().contains("cache.ttl"), "{e}");
    let e = Config::load(None, &env(&[("EDGELINK_CACHE_TTL_SECS", "soon")])).unwrap_err();
    assert!(e.to_string().contains("integer"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[cache]\nttl_sec = 60\n").unwrap();
    let e = Config::load(Some(&path), &env(&[])).unwrap_err();
    assert!(e.to_string().contains("c.toml"), "{e}");

    std::fs::write(&path, "[redirect]\ndefault_status = 303\n").unwrap();
    assert!(Config::load(Some(&path), &env(&[])).is_err());
}

#[test]
fn the_click_flush_runs_at_idle_priority_unless_told_otherwise() {
    let cfg = Config::load(None, &env(&[])).unwrap();
    assert_eq!(cfg.analytics.flush_priority, FlushPriority::Idle);
    let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_PRIORITY", "normal")]);
    let cfg = Config::load(None, &vars).unwrap();
    assert_eq!(cfg.analytics.flush_priority, FlushPriority::Normal);
    let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_PRIORITY", "low")]);
    let e = Config::load(None, &vars).unwrap_err();
    assert!(e.to_string().contains("flush_priority"), "{e}");
}

#[test]
fn a_click_flush_batch_is_bounded() {
    let cfg = Config::load(None, &env(&[])).unwrap();
    assert_eq!(cfg.analytics.flush_batch, 500);
    let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_BATCH", "500")]);
    assert_eq!(
        Config::load(None, &vars).unwrap().analytics.flush_batch,
        500
    );
    for bad in ["0", "1000001"] {
        let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_BATCH", bad)]);
        let e = Config::load(None, &vars)
            .unwrap()
            .validate_for(StorageMode::Embedded)
            .unwrap_err();
        assert!(e.to_string().contains("flush_batch"), "{bad}: {e}");
    }
}

#[test]
fn threading_decides_how_many_public_listeners_to_bind() {
    let cfg = Config::load(
        None,
        &env(&[
            ("EDGELINK_SERVER_THREADING", "work-stealing"),
            ("EDGELINK_SERVER_WORKERS", "3"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.server.threading, Threading::WorkStealing);
    assert_eq!(cfg.server.public_listeners(), 1);
    let cfg = Config::load(None, &env(&[("EDGELINK_SERVER_WORKERS", "3")])).unwrap();
    assert_eq!(cfg.server.threading, Threading::PerCore, "the default");
    assert_eq!(cfg.server.public_listeners(), 3);
    assert!(Config::default().server.worker_count() >= 1);
    let e = Config::load(None, &env(&[("EDGELINK_SERVER_THREADING", "fast")])).unwrap_err();
    assert!(e.to_string().contains("per-core"), "{e}");
}

#[test]
fn validation_reports_every_problem() {
    let mut cfg = Config::default();
    cfg.cache.max_entries = 0;
    cfg.server.max_header_bytes = 10;
    cfg.server.max_connections = usize::MAX;
    cfg.postgres.url = Some("not a url".to_owned());
    cfg.redis.url = Some("nope://x".to_owned());
    cfg.keypool.low_watermark = cfg.keypool.high_watermark;
    cfg.admin.token = Some("short".to_owned());
    let msg = cfg
        .validate_for(StorageMode::Distributed)
        .unwrap_err()
        .to_string();
    for needle in [
        "max_connections",
        "cache.max_entries",
        "max_header_bytes",
        "postgres.url",
        "redis.url",
        "keypool.low_watermark",
        "admin.token",
    ] {
        assert!(msg.contains(needle), "{needle} missing from {msg}");
    }
}
