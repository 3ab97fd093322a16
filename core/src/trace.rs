//! Distributed tracing, lean: B3 propagation in and out (single and multi
//! header), a sampling decision made first (an unsampled request records
//! and allocates nothing), spans queued without blocking and exported in
//! batches as OTLP/HTTP JSON, which Tempo, Jaeger and the OpenTelemetry
//! Collector accept. The current span is task-local ([`scope`],
//! [`current`]), so a store wrapper ([`Traced`]) hangs its calls under it.
//! Export is best effort: a full queue or a failed batch drops spans, and
//! says so in a counter.
//!
//! Formats and limits: `docs/design/tracing.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::config::TracingConfig;
use crate::error::StoreError;
use crate::link::Link;
use crate::store::{ClickDelta, DailyClicks, InsertReport, LinkPatch, LinkStore};

const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The B3 headers, to strip or copy as a set.
pub const B3_HEADERS: [HeaderName; 6] =
    [B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT, B3_SAMPLED, B3_FLAGS];

/// Where a span sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// What a request carried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span, if it sent one.
    pub parent: Option<SpanContext>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
}

fn hex_u128(s: &str) -> Option<u128> {
    // 64- or 128-bit trace ids, lower-case hex.
    (matches!(s.len(), 16 | 32) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|&v| v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|&v| v != 0)
}

fn sampled_flag(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Reads B3 (single header first, then multi). Malformed ids are ignored:
/// the request starts a new trace.
pub fn extract(headers: &HeaderMap) -> Incoming {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(b3) = text(&B3) {
        let mut parts = b3.split('-');
        let first = parts.next().unwrap_or("");
        if let Some(flag) = sampled_flag(first).filter(|_| b3.len() <= 1) {
            return Incoming {
                parent: None,
                sampled: Some(flag),
            };
        }
        let (trace, span) = (hex_u128(first), parts.next().and_then(hex_u64));
        let sampled = parts.next().and_then(sampled_flag);
        if let (Some(trace_id), Some(span_id)) = (trace, span) {
            return Incoming {
                parent: Some(SpanContext {
                    trace_id,
                    span_id,
                    sampled: sampled.unwrap_or(false),
                }),
                sampled,
            };
        }
    }
    let sampled = if text(&B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        text(&B3_SAMPLED).and_then(sampled_flag)
    };
    let trace = text(&B3_TRACE_ID).and_then(hex_u128);
    let span = text(&B3_SPAN_ID).and_then(hex_u64);
    Incoming {
        parent: trace.zip(span).map(|(trace_id, span_id)| SpanContext {
            trace_id,
            span_id,
            sampled: sampled.unwrap_or(false),
        }),
        sampled,
    }
}

/// Writes B3 for a call made from `span` (both forms), replacing any there.
pub fn inject(headers: &mut HeaderMap, span: &SpanContext, parent: Option<u64>) {
    for name in B3_HEADERS {
        headers.remove(name);
    }
    let flag = if span.sampled { "1" } else { "0" };
    let trace = format!("{:032x}", span.trace_id);
    let id = format!("{:016x}", span.span_id);
    let mut single = format!("{trace}-{id}-{flag}");
    if let Some(p) = parent {
        single.push_str(&format!("-{p:016x}"));
    }
    let mut put = |name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put(B3, single);
    put(B3_TRACE_ID, trace);
    put(B3_SPAN_ID, id);
    put(B3_SAMPLED, flag.to_owned());
    if let Some(p) = parent {
        put(B3_PARENT, format!("{p:016x}"));
    }
}

/// A finished span, waiting for export.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub name: &'static str,
    /// OTLP kind: 1 internal, 2 server, 3 client.
    pub kind: u8,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn random_nonzero_u64() -> u64 {
    loop {
        let v = rand::random::<u64>();
        if v != 0 {
            return v;
        }
    }
}

/// Span kinds, as OTLP numbers them.
pub const SERVER: u8 = 2;
pub const CLIENT: u8 = 3;
pub const INTERNAL: u8 = 1;

/// A span being recorded; exported when dropped.
#[derive(Debug)]
pub struct Span {
    tracer: Arc<Tracer>,
    data: SpanData,
}

impl Span {
    pub fn context(&self) -> SpanContext {
        SpanContext {
            trace_id: self.data.trace_id,
            span_id: self.data.span_id,
            sampled: true,
        }
    }

    /// The parent span id, for B3's `ParentSpanId`.
    pub fn parent(&self) -> Option<u64> {
        self.data.parent
    }

    pub fn set(&mut self, key: &'static str, value: impl ToString) {
        self.data.attributes.push((key, value.to_string()));
    }

    pub fn fail(&mut self) {
        self.data.error = true;
    }

    /// A child of this span.
    pub fn child(&self, name: &'static str, kind: u8) -> Span {
        self.tracer
            .span(name, kind, self.context(), Some(self.data.span_id))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.data.end_ns = now_ns();
        let data = std::mem::replace(
            &mut self.data,
            SpanData {
                trace_id: 0,
                span_id: 0,
                parent: None,
                name: "",
                kind: 0,
                start_ns: 0,
                end_ns: 0,
                attributes: Vec::new(),
                error: false,
            },
        );
        self.tracer.finish(data);
    }
}

/// Starts spans and hands finished ones to the exporter.
#[derive(Debug)]
pub struct Tracer {
    ratio: f64,
    queue: tokio::sync::mpsc::Sender<SpanData>,
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
}

impl Tracer {
    /// A tracer exporting to `config.otlp_endpoint`, or `None` when no
    /// endpoint is configured (tracing off: no cost at all). Spawns the
    /// exporter on the current runtime; it stops when the tracer is gone.
    pub fn start(config: &TracingConfig, service: &str) -> Option<Arc<Tracer>> {
        let endpoint = config.otlp_endpoint.clone()?;
        let (tx, rx) = tokio::sync::mpsc::channel(config.max_queue.max(1));
        let tracer = Arc::new(Tracer {
            ratio: config.sample_ratio,
            queue: tx,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
        });
        let service = config
            .service_name
            .clone()
            .unwrap_or_else(|| service.to_owned());
        tokio::spawn(export(
            rx,
            Arc::downgrade(&tracer),
            endpoint,
            service,
            Duration::from_millis(config.export_timeout_ms),
        ));
        Some(tracer)
    }

    /// Whether to record a request that carried `incoming`: the caller's
    /// decision, else the sample ratio.
    pub fn sample(&self, incoming: &Incoming) -> bool {
        match incoming.sampled {
            Some(decided) => decided,
            None => self.ratio > 0.0 && rand::random::<f64>() < self.ratio,
        }
    }

    /// A server span for a request, continuing the caller's trace; `None`
    /// when the request is not sampled.
    pub fn server_span(self: &Arc<Self>, name: &'static str, incoming: &Incoming) -> Option<Span> {
        if !self.sample(incoming) {
            return None;
        }
        let (trace_id, parent) = match incoming.parent {
            Some(p) => (p.trace_id, Some(p.span_id)),
            None => (
                (u128::from(random_nonzero_u64()) << 64) | u128::from(rand::random::<u64>()),
                None,
            ),
        };
        let ctx = SpanContext {
            trace_id,
            span_id: 0,
            sampled: true,
        };
        Some(self.span(name, SERVER, ctx, parent))
    }

    fn span(
        self: &Arc<Self>,
        name: &'static str,
        kind: u8,
        ctx: SpanContext,
        parent: Option<u64>,
    ) -> Span {
        Span {
            tracer: self.clone(),
            data: SpanData {
                trace_id: ctx.trace_id,
                span_id: random_nonzero_u64(),
                parent,
                name,
                kind,
                start_ns: now_ns(),
                end_ns: 0,
                attributes: Vec::new(),
                error: false,
            },
        }
    }

    fn finish(&self, data: SpanData) {
        if data.trace_id == 0 {
            return;
        }
        if self.queue.try_send(data).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// OTLP/HTTP JSON of a batch (ids in hex, times in nanoseconds as strings).
pub fn otlp_json(service: &str, spans: &[SpanData]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": format!("{:032x}", s.trace_id),
                "spanId": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| json!({
                    "key": k, "value": { "stringValue": v }
                })).collect::<Vec<_>>(),
                "status": { "code": if s.error { 2 } else { 1 } },
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = json!(format!("{p:016x}"));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } }
            ]},
            "scopeSpans": [{ "scope": { "name": "edgelink" }, "spans": spans }]
        }]
    })
}

/// Batches spans (up to 512, or what a second brings) and posts them.
async fn export(
    mut rx: tokio::sync::mpsc::Receiver<SpanData>,
    tracer: std::sync::Weak<Tracer>,
    endpoint: String,
    service: String,
    timeout: Duration,
) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let mut failures = 0u32;
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < 512 {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = otlp_json(&service, &batch).to_string();
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let sent = match req {
            Ok(req) => matches!(
                tokio::time::timeout(timeout, client.request(req)).await,
                Ok(Ok(resp)) if resp.status().is_success()
            ),
            Err(_) => false,
        };
        let Some(tracer) = tracer.upgrade() else {
            return;
        };
        if sent {
            failures = 0;
            tracer
                .exported
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        } else {
            failures += 1;
            tracer
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if failures == 1 || failures.is_power_of_two() {
                tracing::warn!(%url, spans = batch.len(), "trace export failed; spans dropped");
            }
        }
    }
}

tokio::task_local! {
    static CURRENT: SpanContext;
    static TRACER: Arc<Tracer>;
}

/// Runs `fut` with `span` as the task's current span.
pub async fn scope<F: std::future::Future>(
    tracer: Arc<Tracer>,
    span: SpanContext,
    fut: F,
) -> F::Output {
    TRACER.scope(tracer, CURRENT.scope(span, fut)).await
}

/// A child of the task's current span, if a sampled one is in scope.
pub fn child(name: &'static str, kind: u8) -> Option<Span> {
    let ctx = CURRENT.try_with(|c| *c).ok()?;
    let tracer = TRACER.try_with(Arc::clone).ok()?;
    Some(tracer.span(name, kind, ctx, Some(ctx.span_id)))
}

/// A [`LinkStore`] whose calls are spans under the task's current span.
pub struct Traced(pub Arc<dyn LinkStore>);

macro_rules! traced {
    ($self:ident, $name:literal, $call:expr) => {{
        let mut span = child($name, CLIENT);
        if let Some(s) = span.as_mut() {
            s.set("db.system", $self.0.name());
        }
        let result = $call.await;
        if let (Some(s), Err(_)) = (span.as_mut(), &result) {
            s.fail();
        }
        result
    }};
}

#[async_trait]
impl LinkStore for Traced {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError> {
        traced!(self, "store.get", self.0.get(code))
    }
    async fn insert_links(&self, links: &[Link]) -> Result<InsertReport, StoreError> {
        traced!(self, "store.insert_links", self.0.insert_links(links))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
    async fn find(&self, code: &str) -> Result<Option<Link>, StoreError> {
        traced!(self, "store.find", self.0.find(code))
    }
    async fn update(&self, code: &str, patch: &LinkPatch) -> Result<Option<Link>, StoreError> {
        traced!(self, "store.update", self.0.update(code, patch))
    }
    async fn delete(&self, code: &str) -> Result<bool, StoreError> {
        traced!(self, "store.delete", self.0.delete(code))
    }
    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<Link>, StoreError> {
        traced!(self, "store.list", self.0.list(after, limit))
    }
    async fn add_clicks(
        &self,
        edge: &str,
        seq: u64,
        deltas: &[ClickDelta],
    ) -> Result<bool, StoreError> {
        self.0.add_clicks(edge, seq, deltas).await
    }
    async fn clicks(
        &self,
        code: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<DailyClicks>, StoreError> {
        traced!(self, "store.clicks", self.0.clicks(code, from, to))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let single = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]));
        let p = single.parent.unwrap();
        assert_eq!(p.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(p.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(single.sampled, Some(true));

        let multi = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!(multi.parent.unwrap().trace_id, 0x463ac35c9f6413ad);
        assert_eq!(multi.sampled, Some(false));

        assert_eq!(extract(&headers(&[("b3", "0")])).sampled, Some(false));
        assert_eq!(extract(&headers(&[("b3", "d")])).sampled, Some(true));
        assert_eq!(
            extract(&headers(&[("x-b3-flags", "1")])).sampled,
            Some(true)
        );
        // Malformed: a new trace.
        let bad = extract(&headers(&[("b3", "xyz-123-1")]));
        assert_eq!(bad.parent, None);
        assert_eq!(
            extract(&HeaderMap::new()),
            Incoming {
                parent: None,
                sampled: None
            }
        );
    }

    #[test]
    fn writes_both_forms_for_the_next_hop() {
        let span = SpanContext {
            trace_id: 0xabc,
            span_id: 0x12,
            sampled: true,
        };
        let mut h = headers(&[("b3", "stale"), ("x-b3-flags", "1")]);
        inject(&mut h, &span, Some(0x34));
        assert_eq!(
            h["b3"],
            "00000000000000000000000000000abc-0000000000000012-1-0000000000000034"
        );
        assert_eq!(h["x-b3-traceid"], "00000000000000000000000000000abc");
        assert_eq!(h["x-b3-spanid"], "0000000000000012");
        assert_eq!(h["x-b3-parentspanid"], "0000000000000034");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-flags").is_none());
        let back = extract(&h);
        assert_eq!(
            back.parent.unwrap().span_id,
            0x12,
            "the next hop reads what was written"
        );
    }
}
