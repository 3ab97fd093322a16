//! Click counting, off the hot path: bot detection by `User-Agent`
//! ([`Bots`]: one Aho-Corasick pass over `edge/bots.txt`, answers cached
//! per thread) and the [`Flusher`].
//!
//! A hit adds one to its index slot and does nothing else. Once a second
//! the flusher drains the counts into (code, UTC day) pairs and writes them
//! to the source of truth as additive deltas ([`LinkStore::add_clicks`]),
//! so any number of edges count one link. A flush is frozen once tried and
//! goes out in sequenced writes of at most `analytics.flush_batch` pairs,
//! spread over half the interval; a retry never counts twice, and pending
//! pairs beyond `analytics.max_pending` are dropped and counted. The edge
//! flushes once more after its last request.
//!
//! Why this shape, and the figures behind it: `docs/design/click-flushing.md`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use edgelink_core::config::FlushPriority;
use edgelink_core::store::ClickDelta;
use edgelink_core::{LinkStore, StoreError};
use http::HeaderValue;
use time::Date;

use crate::domain::Click;
use crate::index::Index;
use crate::metrics::ClickMetrics;

/// Puts the calling thread at `priority`. [`FlushPriority::Normal`]
/// leaves it as it is; [`FlushPriority::Idle`] is Linux's `SCHED_IDLE`
/// (and nice 19), which any thread may take for itself.
pub fn set_priority(priority: FlushPriority) -> Result<(), String> {
    match priority {
        FlushPriority::Normal => Ok(()),
        #[cfg(target_os = "linux")]
        FlushPriority::Idle => {
            use thread_priority::{
                NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            };
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                ThreadPriority::Min,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            )
            .map_err(|e| format!("SCHED_IDLE: {e:?}"))
        }
        #[cfg(not(target_os = "linux"))]
        FlushPriority::Idle => Err("SCHED_IDLE is Linux's".into()),
    }
}

/// The maintained list of bot `User-Agent` substrings.
pub const BOT_LIST: &str = include_str!("../bots.txt");

/// Tells bots from people by `User-Agent`.
///
/// A scan of a browser's `User-Agent` (~110 bytes, no match) against the
/// list costs ~300 ns (`bench/RESULTS.md`), a few percent of a cache hit,
/// so each thread remembers the last answers in a small direct-mapped
/// table keyed by a 64-bit hash of the bytes (seeded per process; a
/// collision, about 2^-64 a pair, could only swap human and bot). Most
/// requests come from a few thousand distinct `User-Agent`s, so most are
/// answered from it for the price of hashing the header.
pub struct Bots {
    matcher: AhoCorasick,
    hasher: foldhash::fast::RandomState,
}

/// Answers remembered per thread.
const SEEN: usize = 1024;

thread_local! {
    /// (hash, answer) by `hash % SEEN`; 0 is never a stored hash.
    static SEEN_ANSWERS: std::cell::RefCell<Box<[(u64, Click); SEEN]>> =
        std::cell::RefCell::new(Box::new([(0, Click::Human); SEEN]));
}

impl std::fmt::Debug for Bots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bots")
            .field("patterns", &self.matcher.patterns_len())
            .finish()
    }
}

impl Bots {
    /// The matcher for [`BOT_LIST`].
    pub fn new() -> Result<Bots, String> {
        Bots::from_list(BOT_LIST)
    }

    /// A matcher for `list` (one pattern a line; `#` comments, blank lines).
    pub fn from_list(list: &str) -> Result<Bots, String> {
        let patterns: Vec<&str> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(patterns)
            .map_err(|e| format!("bot list: {e}"))?;
        Ok(Bots {
            matcher,
            hasher: foldhash::fast::RandomState::default(),
        })
    }

    /// A missing or empty `User-Agent` is a bot's.
    #[inline]
    pub fn classify(&self, user_agent: Option<&HeaderValue>) -> Click {
        self.classify_bytes(user_agent.map(HeaderValue::as_bytes))
    }

    /// [`Bots::classify`] of a header value's bytes.
    #[inline]
    pub fn classify_bytes(&self, user_agent: Option<&[u8]>) -> Click {
        let ua = match user_agent {
            None | Some([]) => return Click::Bot,
            Some(ua) => ua,
        };
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, ua) | 1;
        let i = (hash % SEEN as u64) as usize;
        SEEN_ANSWERS.with(|seen| {
            let mut seen = seen.borrow_mut();
            match seen[i] {
                (h, click) if h == hash => click,
                _ => {
                    let click = self.scan(ua);
                    seen[i] = (hash, click);
                    click
                }
            }
        })
    }

    /// The list scan itself.
    pub fn scan(&self, ua: &[u8]) -> Click {
        if self.matcher.is_match(ua) {
            Click::Bot
        } else {
            Click::Human
        }
    }
}

/// Counts waiting to be frozen into a flush, by UTC day then code (so a
/// drain looks a code up without building a key). Keyed with foldhash:
/// a drain under uniform traffic adds tens of thousands of codes a second,
/// and SipHash was a third of the flusher's time (`perf`); the codes are
/// those of links, hashed with a per-process seed.
#[derive(Default)]
struct Pending {
    days: HashMap<Date, HashMap<String, [u64; 2], foldhash::fast::RandomState>>,
    /// (code, day) pairs held.
    pairs: usize,
}

impl Pending {
    /// Adds to `code`'s count of `day`; a new pair only while fewer than
    /// `room` were added by this caller (`added` counts them). `false`:
    /// no room, not added.
    fn add(
        &mut self,
        code: &[u8],
        day: Date,
        counts: [u64; 2],
        room: usize,
        added: &mut usize,
    ) -> bool {
        let codes = self.days.entry(day).or_default();
        // Codes are ASCII, so this borrows; the key is built only when new.
        let code = String::from_utf8_lossy(code);
        if let Some(c) = codes.get_mut(&*code) {
            c[0] += counts[0];
            c[1] += counts[1];
            return true;
        }
        if *added >= room {
            return false;
        }
        codes.insert(code.into_owned(), counts);
        *added += 1;
        self.pairs += 1;
        true
    }

    fn is_empty(&self) -> bool {
        self.pairs == 0
    }

    fn clicks(&self) -> u64 {
        self.days
            .values()
            .flat_map(|c| c.values())
            .map(|[h, b]| h + b)
            .sum()
    }

    fn take(&mut self) -> Vec<ClickDelta> {
        self.pairs = 0;
        self.days
            .drain()
            .flat_map(|(day, codes)| {
                codes
                    .into_iter()
                    .map(move |(code, [human, bot])| ClickDelta {
                        code,
                        day,
                        human,
                        bot,
                    })
            })
            .collect()
    }
}

/// One write of a flush: retried as it is until the store takes it.
struct Frozen {
    seq: u64,
    deltas: Vec<ClickDelta>,
}

/// The flusher's own thread ([`Flusher::spawn`]).
pub struct FlushThread {
    last: tokio::sync::oneshot::Sender<Duration>,
    thread: std::thread::JoinHandle<()>,
}

impl FlushThread {
    /// The final flush, once every request is answered: tries for at most
    /// `within`, then returns when the thread has ended.
    pub async fn finish(self, within: Duration) {
        let FlushThread { last, thread } = self;
        let _ = last.send(within);
        if tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_or(true, |joined| joined.is_err())
        {
            tracing::error!("the click flusher thread panicked");
        }
    }
}

/// Drains the index's counts and writes them to the store.
pub struct Flusher {
    index: Arc<Index>,
    store: Arc<dyn LinkStore>,
    /// This process's name in `click_edges`: random, per start.
    edge: String,
    seq: u64,
    pending: Pending,
    /// The writes of the flush under way, oldest first.
    frozen: VecDeque<Frozen>,
    max_pending: usize,
    /// (code, day) pairs per write at most.
    batch: usize,
    metrics: ClickMetrics,
    /// Where the store's writes run when not on the flusher's own thread
    /// ([`Flusher::write_on`]).
    writer: Option<tokio::runtime::Handle>,
}

impl Flusher {
    pub fn new(
        index: Arc<Index>,
        store: Arc<dyn LinkStore>,
        max_pending: usize,
        batch: usize,
        metrics: ClickMetrics,
    ) -> Flusher {
        Flusher {
            index,
            store,
            edge: format!("{:016x}", rand::random::<u64>()),
            seq: 0,
            pending: Pending::default(),
            frozen: VecDeque::new(),
            max_pending,
            batch: batch.max(1),
            metrics,
            writer: None,
        }
    }

    /// Runs the store's writes on `runtime` instead of the flusher's own
    /// thread. For SQLite: a write holds the file's one writer lock, which
    /// link creation takes too; on a thread at idle priority that a busy
    /// CPU never runs, it would hold it for as long (priority inversion).
    /// The flusher's own work, collecting and freezing the counts, stays
    /// at its priority.
    pub fn write_on(mut self, runtime: tokio::runtime::Handle) -> Flusher {
        self.writer = Some(runtime);
        self
    }

    /// This edge's flush name.
    #[cfg(test)]
    pub(crate) fn edge(&self) -> &str {
        &self.edge
    }

    fn held(&self) -> usize {
        self.pending.pairs + self.frozen.iter().map(|f| f.deltas.len()).sum::<usize>()
    }

    /// Moves the index's counts into the pending map, as clicks of `day`.
    pub fn collect(&mut self, day: Date) {
        let room = self.max_pending.saturating_sub(self.held());
        let mut added = 0usize;
        let mut dropped = 0u64;
        let pending = &mut self.pending;
        self.index.drain_clicks(|code, human, bot| {
            if !pending.add(code, day, [human, bot], room, &mut added) {
                dropped += human + bot;
            }
        });
        if dropped > 0 {
            self.metrics.dropped.increment(dropped);
            tracing::warn!(
                dropped,
                "click counts dropped: too many waiting to be written"
            );
        }
        self.metrics.pending.set(self.held() as f64);
    }

    /// Writes what is pending, back to back: the writes of the flush under
    /// way first, then (if they all went through) the rest, frozen as the
    /// next flush.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.flush_over(Duration::ZERO, None).await
    }

    /// [`flush`](Self::flush) with its writes spread evenly over `spread`
    /// (the first write at once); once `stop` is cancelled the rest go back
    /// to back.
    pub async fn flush_over(
        &mut self,
        spread: Duration,
        stop: Option<&edgelink_core::shutdown::CancellationToken>,
    ) -> Result<(), StoreError> {
        let mut froze = false;
        let mut written = 0u32;
        loop {
            if self.frozen.is_empty() {
                if froze || self.pending.is_empty() {
                    break;
                }
                self.freeze();
                froze = true;
            }
            if written > 0 && !spread.is_zero() {
                let writes =
                    written.saturating_add(u32::try_from(self.frozen.len()).unwrap_or(u32::MAX));
                let gap = spread / writes;
                match stop {
                    Some(stop) => {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(gap) => {}
                        }
                    }
                    None => tokio::time::sleep(gap).await,
                }
            }
            let Some(write) = self.frozen.front() else {
                break;
            };
            let written_now = match &self.writer {
                None => {
                    self.store
                        .add_clicks(&self.edge, write.seq, &write.deltas)
                        .await
                }
                Some(runtime) => {
                    let (store, edge) = (self.store.clone(), self.edge.clone());
                    let (seq, deltas) = (write.seq, write.deltas.clone());
                    runtime
                        .spawn(async move { store.add_clicks(&edge, seq, &deltas).await })
                        .await
                        .unwrap_or_else(|e| Err(StoreError::unavailable(self.store.name(), e)))
                }
            };
            match written_now {
                // Taken now, or (`Ok(false)`) by an earlier attempt of this
                // process whose answer was lost, say to a timeout while
                // the write went on: the edge's name is its own, so no one
                // else applied this seq. Either way its clicks are written,
                // once, and counted here once, as the write leaves.
                Ok(_) => {
                    let (h, b) = write
                        .deltas
                        .iter()
                        .fold((0, 0), |(h, b), d| (h + d.human, b + d.bot));
                    self.metrics.flushed[0].increment(h);
                    self.metrics.flushed[1].increment(b);
                    self.frozen.pop_front();
                    written += 1;
                    self.metrics.pending.set(self.held() as f64);
                }
                Err(e) => {
                    self.metrics.flush_failures.increment(1);
                    self.metrics.pending.set(self.held() as f64);
                    return Err(e);
                }
            }
        }
        self.metrics.pending.set(self.held() as f64);
        Ok(())
    }

    /// Freezes what is pending into writes of at most `batch` pairs, each
    /// with the next sequence number, in key order: each write then covers
    /// one stretch of the store's index rather than pages all over it.
    fn freeze(&mut self) {
        let mut deltas = self.pending.take();
        deltas.sort_unstable_by(ClickDelta::key_cmp);
        let mut deltas = deltas.into_iter().peekable();
        while deltas.peek().is_some() {
            self.seq += 1;
            self.frozen.push_back(Frozen {
                seq: self.seq,
                deltas: deltas.by_ref().take(self.batch).collect(),
            });
        }
    }

    /// Runs [`Flusher::run`] on a thread of its own (`edgelink-clicks`,
    /// with a single-threaded runtime), so that collecting, freezing and
    /// encoding a flush (tens of thousands of codes a second under
    /// uniform traffic) never holds up a thread that serves requests.
    /// It and its runtime's blocking threads (`edgelink-clk-io`) run at
    /// `priority`: at [`FlushPriority::Idle`] a flush on a CPU that also
    /// serves waits for that CPU to be free instead of taking turns with
    /// requests (`bench/RESULTS.md`). Writes that hold a lock requests
    /// need go elsewhere ([`Flusher::write_on`]).
    /// [`FlushThread::finish`] makes the final flush.
    pub fn spawn(
        self,
        interval: Duration,
        priority: FlushPriority,
        counting: Arc<std::sync::atomic::AtomicBool>,
        stop: edgelink_core::shutdown::CancellationToken,
    ) -> std::io::Result<FlushThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("edgelink-clk-io")
            // Blocking threads are made by the flusher's thread and would
            // inherit its policy anyway; this does not depend on that.
            .on_thread_start(move || {
                let _ = set_priority(priority);
            })
            .build()?;
        let (last, finish) = tokio::sync::oneshot::channel::<Duration>();
        let thread = std::thread::Builder::new()
            .name("edgelink-clicks".into())
            .spawn(move || {
                match set_priority(priority) {
                    Ok(()) => tracing::debug!(?priority, "click flushes"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "click flushes run at normal priority: analytics.flush_priority = \"idle\" could not be applied"
                    ),
                }
                rt.block_on(async move {
                    let flusher = self.run(interval, counting, stop).await;
                    // No final-flush request means the edge failed before
                    // it drained; nothing then waits for the counts.
                    if let Ok(within) = finish.await {
                        flusher.finish(within).await;
                    }
                });
            })?;
        Ok(FlushThread { last, thread })
    }

    /// Collects and flushes every `interval` until `stop`; then returns
    /// itself for the final flush (after the last request).
    pub async fn run(
        mut self,
        interval: Duration,
        counting: Arc<std::sync::atomic::AtomicBool>,
        stop: edgelink_core::shutdown::CancellationToken,
    ) -> Flusher {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self,
                _ = tick.tick() => {}
            }
            // Counting off: nothing new to take (what was counted before
            // goes out with the final flush, or when it is on again).
            if counting.load(std::sync::atomic::Ordering::Relaxed) {
                self.collect(today());
            }
            // Spread over half the interval: the rest is slack for a slow
            // store before the next tick.
            match self.flush_over(interval / 2, Some(&stop)).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "click flush failed; keeping the counts");
                    }
                }
            }
        }
    }

    /// The last flush, at shutdown: tries until `deadline` passes.
    pub async fn finish(mut self, within: Duration) {
        self.collect(today());
        let deadline = tokio::time::Instant::now() + within;
        let mut failures = 0;
        loop {
            match self.flush().await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    let pause = edgelink_core::retry::backoff(failures);
                    if tokio::time::Instant::now() + pause >= deadline {
                        let lost: u64 = self.pending.clicks()
                            + self
                                .frozen
                                .iter()
                                .flat_map(|f| f.deltas.iter())
                                .map(|d| d.human + d.bot)
                                .sum::<u64>();
                        tracing::error!(error = %e, lost, "clicks not written before shutdown");
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Today, UTC.
pub fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

#[cfg(test)]
mod tests;
