//! The edge's metrics: fixed names, bounded labels, handles registered once.
//!
//! Every handle is created at start-up against this edge's own
//! Prometheus recorder (not the global one, so several edges in one test
//! process keep separate numbers) and kept in [`EdgeMetrics`]; the request
//! path only touches atomics. Labels come from fixed sets: status codes the
//! edge can answer with and the tier names, never a code or a URL.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::Tier;
use edgelink_core::breaker::BreakerMetrics;
use edgelink_core::net::ClientFaults;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub const REQUESTS_TOTAL: &str = "edgelink_http_requests_total";
pub const REQUESTS_IN_FLIGHT: &str = "edgelink_http_requests_in_flight";
pub const CACHE_HITS_TOTAL: &str = "edgelink_cache_hits_total";
pub const CACHE_MISSES_TOTAL: &str = "edgelink_cache_misses_total";
pub const CACHE_ENTRIES: &str = "edgelink_cache_entries";
pub const LOOKUPS_TOTAL: &str = "edgelink_backend_lookups_total";
pub const LOOKUP_DURATION_SECONDS: &str = "edgelink_backend_lookup_duration_seconds";
pub const BACKEND_ERRORS_TOTAL: &str = "edgelink_backend_errors_total";
pub const CONNECTIONS_OPEN: &str = "edgelink_connections_open";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "edgelink_connections_rejected_total";
pub const EXPRESS_HANDOFFS_TOTAL: &str = "edgelink_express_handoffs_total";
pub const RATE_LIMITED_TOTAL: &str = "edgelink_rate_limited_total";
pub const RELOADS_TOTAL: &str = "edgelink_config_reloads_total";
pub const RELOAD_FAILURES_TOTAL: &str = "edgelink_config_reload_failures_total";
pub const PROXY_REQUESTS_TOTAL: &str = "edgelink_proxy_requests_total";
pub const PROXY_RETRIES_TOTAL: &str = "edgelink_proxy_retries_total";
pub const PROXY_EJECTIONS_TOTAL: &str = "edgelink_proxy_ejections_total";
pub const PROXY_UPSTREAMS: &str = "edgelink_proxy_upstreams";
pub const PROXY_READMISSIONS_TOTAL: &str = "edgelink_proxy_readmissions_total";
pub const PROXY_FAILURES_TOTAL: &str = "edgelink_proxy_failures_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "edgelink_access_log_dropped_total";
pub const REQUEST_RATE: &str = "edgelink_http_request_rate";
pub const CLICKS_TOTAL: &str = "edgelink_clicks_total";
pub const CLICKS_DROPPED_TOTAL: &str = "edgelink_clicks_dropped_total";
pub const CLICK_FLUSH_FAILURES_TOTAL: &str = "edgelink_click_flush_failures_total";
pub const CLICKS_PENDING: &str = "edgelink_clicks_pending";
pub const STALE_SERVED_TOTAL: &str = "edgelink_stale_served_total";
pub const WRITEBACKS_SKIPPED_TOTAL: &str = "edgelink_cache_writebacks_skipped_total";
pub const TLS_CERTIFICATE_EXPIRY_SECONDS: &str = "edgelink_tls_certificate_expiry_seconds";

/// Status codes the public listener answers with (its own and the
/// proxied API's), in label order; any other counts as 500.
pub const STATUSES: [u16; 23] = [
    200, 201, 204, 301, 302, 307, 308, 400, 401, 403, 404, 405, 408, 409, 410, 413, 414, 422, 429,
    500, 502, 503, 504,
];

const TIERS: usize = 4;

/// Backends with lookup metrics, by index.
pub const BACKEND_CACHE: usize = 0;
pub const BACKEND_STORE: usize = 1;

/// Error kinds of [`edgelink_core::StoreError::kind`], in label order.
const ERROR_KINDS: [&str; 4] = ["timeout", "unavailable", "corrupt", "circuit_open"];

const LOOKUP_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The flusher's metric handles.
#[derive(Clone)]
pub struct ClickMetrics {
    /// Clicks written to the source of truth: human, bot.
    pub flushed: [Counter; 2],
    pub dropped: Counter,
    pub flush_failures: Counter,
    /// (code, day) pairs waiting to be written.
    pub pending: Gauge,
}

impl ClickMetrics {
    pub fn noop() -> ClickMetrics {
        ClickMetrics {
            flushed: [Counter::noop(), Counter::noop()],
            dropped: Counter::noop(),
            flush_failures: Counter::noop(),
            pending: Gauge::noop(),
        }
    }
}

/// Index of `status` in [`STATUSES`]; unknown statuses count as 500.
pub fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(INTERNAL_ERROR_INDEX)
}

const INTERNAL_ERROR_INDEX: usize = 19;

/// The reverse proxy's handles.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub forwarded: Counter,
    pub retries: Counter,
    pub ejections: Counter,
    /// Ejected hosts readmitted after a successful probe.
    pub readmitted: Counter,
    /// Upstreams by breaker state: closed, open, half_open.
    pub upstreams: [Gauge; 3],
    /// Answers the proxy made itself: 502, 503, 504.
    pub failed: [Counter; 3],
}

pub struct EdgeMetrics {
    requests: [[Counter; TIERS]; STATUSES.len()],
    pub in_flight: Gauge,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    pub lookups: [Counter; 2],
    pub lookup_seconds: [Histogram; 2],
    errors: [[Counter; ERROR_KINDS.len()]; 2],
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub express_handoffs: Counter,
    pub rate_limited: Counter,
    pub reloads: Counter,
    pub reloads_failed: Counter,
    pub proxy: ProxyMetrics,
    /// Per backend ([`BACKEND_CACHE`], [`BACKEND_STORE`]).
    pub breakers: [BreakerMetrics; 2],
    /// Tier-0 answers served past their TTL because the backends failed.
    pub stale_served: Counter,
    /// Tier-1 write-backs dropped because too many were in flight.
    pub writebacks_skipped: Counter,
    pub clicks: ClickMetrics,
    /// Requests answered per second over the last second.
    pub request_rate: Gauge,
    pub access_log_dropped: Counter,
    /// Requests refused as the client's fault, by reason.
    pub client_faults: ClientFaults,
    /// Requests answered, for the rate: one stripe per thread, so counting
    /// is one uncontended atomic add.
    pub answered: Stripes,
    /// For series whose labels are known only later (certificate files).
    recorder: Arc<PrometheusRecorder>,
}

/// A counter striped over cache lines: each thread adds to its own stripe
/// (threads beyond the stripe count share), and a reader sums them.
pub struct Stripes([Stripe; STRIPES]);

#[repr(align(128))]
#[derive(Default)]
struct Stripe(std::sync::atomic::AtomicU64);

const STRIPES: usize = 16;

impl Default for Stripes {
    fn default() -> Self {
        Stripes(std::array::from_fn(|_| Stripe::default()))
    }
}

impl Stripes {
    #[inline]
    pub fn add(&self, n: u64) {
        thread_local! {
            static MINE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES
            };
        }
        let i = MINE.with(|i| *i);
        self.0[i]
            .0
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

impl EdgeMetrics {
    /// Registers every handle against a new recorder; returns the handles
    /// and the handle that renders them. Without a tier 1 (`cache_name` is
    /// `None`) its series are not registered at all.
    pub fn new(
        cache_name: Option<&'static str>,
        store_name: &'static str,
    ) -> (EdgeMetrics, PrometheusHandle) {
        let recorder: PrometheusRecorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(LOOKUP_DURATION_SECONDS.to_owned()),
                &LOOKUP_BUCKETS,
            )
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let has_tier1 = cache_name.is_some();
        let cache_name = cache_name.unwrap_or("cache");
        // Series of an absent tier 1 stay unregistered (no-op handles).
        let present = move |is_tier1: bool| has_tier1 || !is_tier1;
        let tier_label = move |t: usize| match t {
            0 => "none",
            1 => "memory",
            2 => cache_name,
            _ => store_name,
        };
        let backend_label = move |b: usize| {
            if b == BACKEND_CACHE {
                cache_name
            } else {
                store_name
            }
        };
        let m = metrics::with_local_recorder(&*recorder, || {
            describe();
            edgelink_core::telemetry::build_info("edge");
            EdgeMetrics {
                requests: std::array::from_fn(|s| {
                    std::array::from_fn(|t| {
                        if !present(t == Tier::Cache as usize) {
                            return Counter::noop();
                        }
                        metrics::counter!(REQUESTS_TOTAL,
                            "status" => status_label(STATUSES[s]),
                            "tier" => tier_label(t))
                    })
                }),
                in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
                cache_hits: metrics::counter!(CACHE_HITS_TOTAL),
                cache_misses: metrics::counter!(CACHE_MISSES_TOTAL),
                cache_entries: metrics::gauge!(CACHE_ENTRIES),
                lookups: std::array::from_fn(|b| {
                    if !present(b == BACKEND_CACHE) {
                        return Counter::noop();
                    }
                    metrics::counter!(LOOKUPS_TOTAL, "backend" => backend_label(b))
                }),
                lookup_seconds: std::array::from_fn(|b| {
                    if !present(b == BACKEND_CACHE) {
                        return Histogram::noop();
                    }
                    metrics::histogram!(LOOKUP_DURATION_SECONDS, "backend" => backend_label(b))
                }),
                errors: std::array::from_fn(|b| {
                    std::array::from_fn(|k| {
                        if !present(b == BACKEND_CACHE) {
                            return Counter::noop();
                        }
                        metrics::counter!(BACKEND_ERRORS_TOTAL,
                            "backend" => backend_label(b),
                            "kind" => ERROR_KINDS[k])
                    })
                }),
                connections_open: metrics::gauge!(CONNECTIONS_OPEN),
                connections_rejected: metrics::counter!(CONNECTIONS_REJECTED_TOTAL),
                express_handoffs: metrics::counter!(EXPRESS_HANDOFFS_TOTAL),
                rate_limited: metrics::counter!(RATE_LIMITED_TOTAL),
                reloads: metrics::counter!(RELOADS_TOTAL),
                reloads_failed: metrics::counter!(RELOAD_FAILURES_TOTAL),
                proxy: ProxyMetrics {
                    forwarded: metrics::counter!(PROXY_REQUESTS_TOTAL),
                    retries: metrics::counter!(PROXY_RETRIES_TOTAL),
                    ejections: metrics::counter!(PROXY_EJECTIONS_TOTAL),
                    readmitted: metrics::counter!(PROXY_READMISSIONS_TOTAL),
                    upstreams: ["closed", "open", "half_open"]
                        .map(|s| metrics::gauge!(PROXY_UPSTREAMS, "state" => s)),
                    failed: ["502", "503", "504"]
                        .map(|s| metrics::counter!(PROXY_FAILURES_TOTAL, "status" => s)),
                },
                breakers: std::array::from_fn(|b| {
                    if !present(b == BACKEND_CACHE) {
                        return BreakerMetrics::default();
                    }
                    BreakerMetrics::register(backend_label(b))
                }),
                stale_served: metrics::counter!(STALE_SERVED_TOTAL),
                writebacks_skipped: metrics::counter!(WRITEBACKS_SKIPPED_TOTAL),
                request_rate: metrics::gauge!(REQUEST_RATE),
                access_log_dropped: metrics::counter!(ACCESS_LOG_DROPPED_TOTAL),
                client_faults: ClientFaults::register(),
                answered: Stripes::default(),
                clicks: ClickMetrics {
                    flushed: ["human", "bot"].map(|k| metrics::counter!(CLICKS_TOTAL, "kind" => k)),
                    dropped: metrics::counter!(CLICKS_DROPPED_TOTAL),
                    flush_failures: metrics::counter!(CLICK_FLUSH_FAILURES_TOTAL),
                    pending: metrics::gauge!(CLICKS_PENDING),
                },
                recorder: recorder.clone(),
            }
        });
        (m, handle)
    }

    /// `edgelink_build_info` for another role this process serves.
    pub fn serves(&self, role: &'static str) {
        metrics::with_local_recorder(&*self.recorder, || {
            edgelink_core::telemetry::build_info(role)
        });
    }

    /// The expiry gauge of a served certificate file.
    pub fn certificate_expiry(&self, cert: &std::path::Path) -> Gauge {
        let file = cert.display().to_string();
        metrics::with_local_recorder(
            &*self.recorder,
            || metrics::gauge!(TLS_CERTIFICATE_EXPIRY_SECONDS, "certificate" => file),
        )
    }

    #[inline]
    pub fn request(&self, status_index: usize, tier: Tier) {
        self.requests[status_index][tier as usize].increment(1);
        self.answered.add(1);
    }

    pub fn lookup(&self, backend: usize, took: Duration) {
        self.lookups[backend].increment(1);
        self.lookup_seconds[backend].record(took.as_secs_f64());
    }

    pub fn backend_error(&self, backend: usize, kind: &str) {
        let k = ERROR_KINDS.iter().position(|&e| e == kind).unwrap_or(1);
        self.errors[backend][k].increment(1);
    }
}

/// The label of `s`, from the same table as [`STATUSES`].
fn status_label(s: u16) -> &'static str {
    const LABELS: [&str; STATUSES.len()] = [
        "200", "201", "204", "301", "302", "307", "308", "400", "401", "403", "404", "405", "408",
        "409", "410", "413", "414", "422", "429", "500", "502", "503", "504",
    ];
    LABELS[status_index(s)]
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by status and by the tier that answered."
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Requests being answered now.");
    describe_counter!(
        CACHE_HITS_TOTAL,
        "Redirect lookups answered by the in-process cache (tier 0)."
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        "Redirect lookups the in-process cache could not answer."
    );
    describe_gauge!(
        CACHE_ENTRIES,
        "Entries in the in-process cache (found, gone and unknown codes)."
    );
    describe_counter!(LOOKUPS_TOTAL, "Lookups sent to a backend tier.");
    describe_histogram!(
        LOOKUP_DURATION_SECONDS,
        Unit::Seconds,
        "Time of one backend lookup, by backend."
    );
    describe_counter!(
        BACKEND_ERRORS_TOTAL,
        "Backend calls that failed, by backend and kind."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Client connections open on the public listener."
    );
    describe_counter!(
        CONNECTIONS_REJECTED_TOTAL,
        "Connections closed at accept because the connection cap was reached."
    );
    describe_counter!(
        EXPRESS_HANDOFFS_TOTAL,
        "Connections the express lane handed to hyper (a request it does not answer)."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests answered 429 by a per-client-IP rate limit."
    );
    describe_counter!(RELOADS_TOTAL, "Configuration reloads applied.");
    describe_counter!(
        RELOAD_FAILURES_TOTAL,
        "Configuration reloads refused (the running configuration was kept)."
    );
    describe_counter!(PROXY_REQUESTS_TOTAL, "Requests sent to the reverse proxy.");
    describe_counter!(PROXY_RETRIES_TOTAL, "Proxy attempts that were retries.");
    describe_counter!(
        PROXY_EJECTIONS_TOTAL,
        "Upstream hosts ejected by outlier detection."
    );
    BreakerMetrics::describe();
    describe_gauge!(
        REQUEST_RATE,
        "Requests answered per second on the public listener, over the last second (for the autoscaler)."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access log lines dropped because the writer was behind (access_log.max_queue)."
    );
    describe_counter!(
        CLICKS_TOTAL,
        "Clicks (redirects served) written to the source of truth, by kind (human, bot)."
    );
    describe_counter!(
        CLICKS_DROPPED_TOTAL,
        "Clicks dropped because analytics.max_pending (code, day) pairs were already waiting."
    );
    describe_counter!(
        CLICK_FLUSH_FAILURES_TOTAL,
        "Click flush writes that failed (their counts are kept and retried)."
    );
    describe_gauge!(
        CLICKS_PENDING,
        "(code, day) click counts waiting to be written to the source of truth."
    );
    describe_gauge!(
        TLS_CERTIFICATE_EXPIRY_SECONDS,
        Unit::Seconds,
        "When a served certificate expires (its leaf's notAfter), Unix time; NaN once the file is no longer served."
    );
    describe_counter!(
        STALE_SERVED_TOTAL,
        "Tier-0 answers served past their TTL because the backends could not be asked."
    );
    describe_counter!(
        WRITEBACKS_SKIPPED_TOTAL,
        "Tier-1 write-backs dropped because the bound on those in flight was reached."
    );
    describe_gauge!(
        PROXY_UPSTREAMS,
        "Proxy upstream hosts by breaker state: closed (in rotation), open (ejected), half_open (on probation)."
    );
    describe_counter!(
        PROXY_READMISSIONS_TOTAL,
        "Ejected upstream hosts readmitted after a successful probe (breaker closed)."
    );
    describe_counter!(
        PROXY_FAILURES_TOTAL,
        "Answers the proxy made itself because no upstream answered, by status."
    );
}

/// Keeps the in-flight gauge right whatever way a request ends.
pub struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    #[inline]
    pub fn enter(g: &'a Gauge) -> Self {
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_match_their_index() {
        assert_eq!(STATUSES[INTERNAL_ERROR_INDEX], 500);
        for (i, s) in STATUSES.iter().enumerate() {
            assert_eq!(status_index(*s), i);
            assert_eq!(status_label(*s), s.to_string());
        }
        assert_eq!(status_index(418), INTERNAL_ERROR_INDEX);
    }

    #[test]
    fn an_absent_tier1_has_no_series() {
        let (m, handle) = EdgeMetrics::new(None, "sqlite");
        m.request(status_index(302), Tier::Store);
        let text = handle.render();
        assert!(text.contains(r#"edgelink_http_requests_total{status="302",tier="sqlite"} 1"#));
        assert!(!text.contains(r#"tier="cache""#), "{text}");
        assert!(!text.contains(r#"backend="cache""#), "{text}");
        let (_, handle) = EdgeMetrics::new(Some("redis"), "postgres");
        assert!(handle.render().contains(r#"backend="redis""#));
    }
}
