use super::*;
use std::time::Duration;

fn permanent() -> HeaderValue {
    HeaderValue::from_static("public, max-age=60")
}

fn redirect(code: &str, target: &str) -> (Bytes, Answer) {
    let block = block(code.as_bytes(), target.as_bytes());
    let location = HeaderValue::from_maybe_shared(block.slice(code.len()..)).unwrap();
    let answer = Answer::Redirect {
        status: StatusCode::FOUND,
        location,
        cache_control: NO_STORE,
        expires_at: None,
    };
    (block, answer)
}

fn insert(index: &Index, code: &str, block: &Bytes, answer: &Answer, ttl: Duration) {
    index.insert(code, index.hash(code), block, answer, Instant::now() + ttl);
}

fn get(index: &Index, code: &str) -> Option<Answer> {
    index.get(code, index.hash(code), &permanent(), None)
}

#[test]
fn blocks_hold_the_code_then_the_value_in_every_size_class() {
    for len in [0, 1, 40, 48, 49, 112, 113, 240, 241, 2_000] {
        let target = "x".repeat(len);
        let b = block(b"code123", target.as_bytes());
        assert_eq!(&b[..7], b"code123");
        assert_eq!(&b[7..], target.as_bytes());
    }
}

/// The express lane copies a hit's value as it is, so a value that
/// could split the response head is never indexed.
#[test]
fn a_value_that_is_not_a_header_value_is_not_indexed() {
    let index = Index::new();
    let (_, answer) = redirect("ok", "https://e.com/a");
    let bad = block(b"bad", b"https://e.com/\r\nset-cookie: x");
    insert(&index, "bad", &bad, &answer, Duration::from_secs(60));
    assert!(get(&index, "bad").is_none());
    let hash = index.hash("bad");
    assert!(index
        .with_redirect("bad", hash, None, |_, _, _| ())
        .is_none());
    assert_eq!(index.len(), 0);
}

#[test]
fn serves_until_the_deadline() {
    let index = Index::new();
    let (b, a) = redirect("a", "https://example.com/a");
    insert(&index, "a", &b, &a, Duration::from_secs(60));
    match get(&index, "a").unwrap() {
        Answer::Redirect {
            location, status, ..
        } => {
            assert_eq!(location, "https://example.com/a");
            assert_eq!(status, StatusCode::FOUND);
        }
        other => panic!("{other:?}"),
    }
    assert!(get(&index, "b").is_none());
    let old = block(b"old", b"");
    index.insert(
        "old",
        index.hash("old"),
        &old,
        &Answer::NotFound,
        Instant::now() - Duration::from_millis(1),
    );
    assert!(get(&index, "old").is_none(), "past its deadline");
    assert_eq!(index.len(), 2);
    index.sweep(0, Index::SHARDS);
    assert_eq!(index.len(), 1, "the sweep drops expired slots");
}

#[test]
fn codes_sharing_a_prefix_with_the_value_do_not_match() {
    // The code is compared on its own bytes, not on the block's start.
    let index = Index::new();
    let (b, a) = redirect("ab", "cd");
    insert(&index, "ab", &b, &a, Duration::from_secs(60));
    assert!(get(&index, "abc").is_none());
    assert!(get(&index, "a").is_none());
    assert!(get(&index, "ab").is_some());
}

#[test]
fn eviction_removes_only_the_entry_it_names() {
    let index = Index::new();
    let ttl = Duration::from_secs(60);
    let (old, a1) = redirect("a", "https://example.com/old");
    let (new, a2) = redirect("a", "https://example.com/new");
    insert(&index, "a", &old, &a1, ttl);
    insert(&index, "a", &new, &a2, ttl);
    index.remove_if_same("a", &old);
    assert!(
        matches!(get(&index, "a"), Some(Answer::Redirect { location, .. }) if location == "https://example.com/new"),
        "a newer entry stays"
    );
    index.remove_if_same("a", &new);
    assert!(get(&index, "a").is_none());
    assert!(index.is_empty());
}

#[test]
fn keeps_status_cache_control_and_expiry() {
    let index = Index::new();
    let b = block(b"p", b"https://example.com/p");
    let a = Answer::Redirect {
        status: StatusCode::MOVED_PERMANENTLY,
        location: HeaderValue::from_maybe_shared(b.slice(1..)).unwrap(),
        cache_control: permanent(),
        expires_at: Some(4_000_000_000),
    };
    insert(&index, "p", &b, &a, Duration::from_secs(60));
    match get(&index, "p").unwrap() {
        Answer::Redirect {
            status,
            cache_control,
            expires_at,
            ..
        } => {
            assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
            assert_eq!(cache_control, permanent());
            assert_eq!(expires_at, Some(4_000_000_000));
        }
        other => panic!("{other:?}"),
    }
    let g = block(b"g", b"");
    insert(&index, "g", &g, &Answer::Gone, Duration::from_secs(60));
    assert!(matches!(get(&index, "g"), Some(Answer::Gone)));
}

fn drained(index: &Index) -> Vec<(String, u64, u64)> {
    let mut all = Vec::new();
    index.drain_clicks(|code, h, b| all.push((String::from_utf8(code.to_vec()).unwrap(), h, b)));
    all.sort();
    all
}

#[test]
fn clicks_are_counted_on_hits_and_survive_replacement_and_removal() {
    let index = Index::new();
    let ttl = Duration::from_secs(60);
    let (b, a) = redirect("a", "https://example.com/a");
    insert(&index, "a", &b, &a, ttl);
    let hit = |click| index.get("a", index.hash("a"), &permanent(), click);
    for _ in 0..3 {
        hit(Some(Click::Human));
    }
    hit(Some(Click::Bot));
    hit(None); // counting off
    assert_eq!(drained(&index), [("a".to_owned(), 3, 1)]);
    assert!(drained(&index).is_empty(), "a drain takes the counts");

    // Replaced (a new answer for the same code): the counts carry over.
    hit(Some(Click::Human));
    let (b2, a2) = redirect("a", "https://example.com/a2");
    insert(&index, "a", &b2, &a2, ttl);
    hit(Some(Click::Human));
    // Removed (an invalidation), and counted without a slot.
    index.remove("a");
    index.count("a", index.hash("a"), Click::Bot);
    assert_eq!(drained(&index), [("a".to_owned(), 2, 1)]);

    // Unknown and gone codes are not counted.
    let g = block(b"g", b"");
    insert(&index, "g", &g, &Answer::Gone, ttl);
    index.get("g", index.hash("g"), &permanent(), Some(Click::Human));
    assert!(drained(&index).is_empty());

    // Swept or cleared slots spill their counts.
    let (b3, a3) = redirect("s", "https://example.com/s");
    index.insert(
        "s",
        index.hash("s"),
        &b3,
        &a3,
        Instant::now() + Duration::from_millis(30),
    );
    index.get("s", index.hash("s"), &permanent(), Some(Click::Human));
    std::thread::sleep(Duration::from_millis(40));
    index.sweep(0, Index::SHARDS);
    let (b4, a4) = redirect("c", "https://example.com/c");
    insert(&index, "c", &b4, &a4, ttl);
    index.get("c", index.hash("c"), &permanent(), Some(Click::Bot));
    index.clear();
    assert_eq!(
        drained(&index),
        [("c".to_owned(), 0, 1), ("s".to_owned(), 1, 0)]
    );
}

#[test]
fn a_slot_is_one_cache_line() {
    assert_eq!(std::mem::size_of::<Slot>(), 64);
}

#[test]
fn samples_one_call_in_sample() {
    let n = (0..SAMPLE * 10).filter(|_| sampled()).count();
    assert_eq!(n, 10);
}
