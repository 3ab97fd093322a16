#![allow(clippy::unwrap_used)]
use super::*;

/// The calling thread's scheduling policy.
#[cfg(target_os = "linux")]
fn policy() -> u32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    edgelink_core::testing::sched_policy(&stat).unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn idle_priority_is_sched_idle_and_normal_leaves_the_thread_alone() {
    let on_thread = |p| {
        std::thread::spawn(move || (set_priority(p), policy()))
            .join()
            .unwrap()
    };
    assert_eq!(on_thread(FlushPriority::Idle), (Ok(()), 5));
    assert_eq!(on_thread(FlushPriority::Normal), (Ok(()), 0));
}

/// A SQLite store (the embedded one, real) in `dir`.
async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<edgelink_core::store::sqlite::SqliteStore> {
    let config = edgelink_core::config::SqliteConfig {
        path: dir.path().join("clicks.db"),
        ..Default::default()
    };
    Arc::new(
        edgelink_core::store::sqlite::SqliteStore::open(&config)
            .await
            .unwrap(),
    )
}

/// A flush of more pairs than a batch goes out as several writes, each
/// applied once, spread over the time it is given; without a spread
/// they go back to back. On paused time (which stands still while the
/// store's blocking writes run), the spread is exactly the gaps.
#[tokio::test(start_paused = true)]
async fn a_flush_is_written_in_batches_spread_over_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let index = Arc::new(Index::new());
    let click_all = |round: u64| {
        for i in 0..10u64 {
            let code = format!("c{i}");
            for _ in 0..=i + round {
                index.count(&code, index.hash(&code), Click::Human);
            }
        }
    };
    let mut flusher = Flusher::new(index.clone(), store.clone(), 1_000, 3, ClickMetrics::noop());

    click_all(0);
    flusher.collect(today());
    let started = tokio::time::Instant::now();
    flusher
        .flush_over(Duration::from_millis(400), None)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(flusher.seq, 4, "10 pairs in writes of at most 3");
    // Four writes, three gaps of 100 ms between them.
    assert_eq!(took, Duration::from_millis(300));

    click_all(1);
    flusher.collect(today());
    let started = tokio::time::Instant::now();
    flusher.flush().await.unwrap();
    assert_eq!(flusher.seq, 8);
    assert_eq!(started.elapsed(), Duration::ZERO, "back to back");

    let day = today();
    for i in 0..10u64 {
        let days = store.clicks(&format!("c{i}"), day, day).await.unwrap();
        assert_eq!(days.len(), 1);
        assert_eq!((days[0].human, days[0].bot), (2 * i + 3, 0), "c{i}");
    }
    assert_eq!(flusher.held(), 0);
}

/// A write whose answer was lost (here: applied by the store before
/// the flusher heard back) is retried, skipped by the store, and its
/// clicks still count as written, once.
#[tokio::test]
async fn a_write_applied_by_an_attempt_whose_answer_was_lost_counts_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let index = Arc::new(Index::new());
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let metrics = ClickMetrics {
        flushed: [
            metrics::Counter::from_arc(written.clone()),
            metrics::Counter::noop(),
        ],
        ..ClickMetrics::noop()
    };
    let mut flusher = Flusher::new(index.clone(), store.clone(), 1_000, 500, metrics);
    for _ in 0..3 {
        index.count("a", index.hash("a"), Click::Human);
    }
    flusher.collect(today());
    // The first attempt: the store took it, the answer never came.
    let delta = ClickDelta {
        code: "a".into(),
        day: today(),
        human: 3,
        bot: 0,
    };
    assert!(store.add_clicks(flusher.edge(), 1, &[delta]).await.unwrap());
    flusher.flush().await.unwrap();
    assert_eq!(written.load(std::sync::atomic::Ordering::Relaxed), 3);
    let days = store.clicks("a", today(), today()).await.unwrap();
    assert_eq!(days[0].human, 3, "written once");
    assert_eq!(flusher.held(), 0);
}

#[test]
fn browsers_are_people_and_fetchers_are_bots() {
    let bots = Bots::new().unwrap();
    let ua = |s: &'static str| Some(HeaderValue::from_static(s));
    for human in [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    ] {
        assert_eq!(bots.classify(ua(human).as_ref()), Click::Human, "{human}");
    }
    for bot in [
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Twitterbot/1.0",
        "WhatsApp/2.23.20.0",
        "TelegramBot (like TwitterBot)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "curl/8.5.0",
        "python-requests/2.32.3",
        "Go-http-client/1.1",
        "UptimeRobot/2.0",
        "kube-probe/1.31",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
    ] {
        assert_eq!(bots.classify(ua(bot).as_ref()), Click::Bot, "{bot}");
    }
    assert_eq!(bots.classify(None), Click::Bot, "no User-Agent");
    // Asked again (answered from the thread's table), same answers.
    assert_eq!(bots.classify(ua("curl/8.5.0").as_ref()), Click::Bot);
    assert_eq!(
        bots.classify(ua("Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Firefox/133.0").as_ref()),
        Click::Human
    );
    // Many distinct User-Agents through the small table: still right.
    for i in 0..5_000 {
        let human = HeaderValue::from_str(&format!("Mozilla/5.0 Firefox/{i}")).unwrap();
        let bot = HeaderValue::from_str(&format!("ExampleBot/{i}")).unwrap();
        assert_eq!(bots.classify(Some(&human)), Click::Human);
        assert_eq!(bots.classify(Some(&bot)), Click::Bot);
    }
    assert_eq!(bots.classify(ua("").as_ref()), Click::Bot, "an empty one");
}
