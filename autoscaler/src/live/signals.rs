//! The autoscaler's view of the fleet: each edge's admin `/metrics`
//! scraped (targets from a list, DNS, or the process actuator), or a
//! Prometheus server asked, and turned into one [`Reading`].
//!
//! A target that does not answer is *stale*; the reading says how many
//! were, and the loop then refuses to scale in (as the HPA does with
//! missing metrics: they never cause a scale-down).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// The largest `/metrics` page or query answer read (an edge's is ~10 kB).
const MAX_BODY: usize = 4 << 20;

/// One evaluation's signals for the whole fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Requests per second the fleet served since the last reading.
    pub rate: f64,
    /// Edges that answered.
    pub ready: u32,
    /// Edges that were expected and did not answer (or gave no rate).
    pub stale: u32,
    /// Mean CPU use of the answering edges, in cores (0 when unknown).
    pub cpu_cores: f64,
    /// Requests in flight on the answering edges.
    pub in_flight: f64,
}

/// What one edge's `/metrics` said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// `edgelink_http_requests_total`, summed over its labels.
    pub requests: f64,
    /// `edgelink_http_request_rate`: requests/s over the last second.
    pub rate_gauge: f64,
    pub in_flight: f64,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
}

/// Sums every sample of metric `name` (any labels) in Prometheus text;
/// `None` when there is none.
pub fn sum_of(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name` must end here: `name{...} v` or `name v`.
        let rest = match rest.as_bytes().first() {
            Some(b'{') => match rest.find('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            },
            Some(b' ') => rest,
            _ => continue,
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            if v.is_finite() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

impl Sample {
    /// `None` unless the page has the edge's request counter.
    pub fn parse(text: &str) -> Option<Sample> {
        Some(Sample {
            requests: sum_of(text, "edgelink_http_requests_total")?,
            rate_gauge: sum_of(text, "edgelink_http_request_rate").unwrap_or(0.0),
            in_flight: sum_of(text, "edgelink_http_requests_in_flight").unwrap_or(0.0),
            cpu_seconds: sum_of(text, "process_cpu_seconds_total").unwrap_or(0.0),
        })
    }
}

/// Scrapes edges and keeps each one's previous sample, to turn counters
/// into rates.
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    last: HashMap<String, (Sample, Instant)>,
}

impl std::fmt::Debug for Scraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraper")
            .field("targets_seen", &self.last.len())
            .finish()
    }
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{url}: timed out after {} ms", timeout.as_millis()))?
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(http)
}

impl Scraper {
    pub fn new(timeout: Duration) -> Scraper {
        Scraper {
            client: client(),
            timeout,
            last: HashMap::new(),
        }
    }

    /// Scrapes every target (`host:port` of an admin listener) at once and
    /// sums them. `expected` more than answered counts as stale too.
    pub async fn read(&mut self, targets: &[String], expected: u32) -> Reading {
        let now = Instant::now();
        let pages = futures_join(targets.iter().map(|t| {
            let url = format!("http://{t}/metrics");
            let client = self.client.clone();
            let timeout = self.timeout;
            async move { get(&client, &url, timeout).await }
        }))
        .await;
        let mut reading = Reading::default();
        let mut cpu = 0.0;
        let mut answered = HashMap::new();
        for (target, page) in targets.iter().zip(pages) {
            let sample = match page.map(|p| Sample::parse(&p)) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    tracing::debug!(%target, "no edgelink_http_requests_total: not an edge");
                    reading.stale += 1;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "scrape failed");
                    reading.stale += 1;
                    continue;
                }
            };
            reading.ready += 1;
            reading.in_flight += sample.in_flight;
            match self.last.get(target) {
                Some((prev, at)) if now > *at => {
                    let dt = now.duration_since(*at).as_secs_f64();
                    // A counter that went down restarted (a new process).
                    let served = if sample.requests >= prev.requests {
                        sample.requests - prev.requests
                    } else {
                        sample.requests
                    };
                    reading.rate += served / dt;
                    if sample.cpu_seconds >= prev.cpu_seconds {
                        cpu += (sample.cpu_seconds - prev.cpu_seconds) / dt;
                    }
                }
                // First sight of this edge: its last second's rate.
                _ => reading.rate += sample.rate_gauge,
            }
            answered.insert(target.clone(), (sample, now));
        }
        if reading.ready > 0 {
            reading.cpu_cores = cpu / f64::from(reading.ready);
        }
        reading.stale += expected.saturating_sub(reading.ready + reading.stale);
        // Forget edges that did not answer: a counter seen again after a
        // gap would be averaged over the gap.
        self.last = answered;
        reading
    }
}

/// Runs futures at once, keeping their order (the scrape fan-out).
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// Every address `name` (`host:port`) resolves to, as `ip:port` targets.
pub async fn resolve(name: &str) -> Result<Vec<String>, String> {
    let mut addrs: Vec<String> = tokio::net::lookup_host(name)
        .await
        .map_err(|e| format!("{name}: {e}"))?
        .map(|a| a.to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Asks a Prometheus server's HTTP API (`/api/v1/query`).
pub struct Prometheus {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: String,
    timeout: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.url)
            .finish()
    }
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Prometheus {
        Prometheus {
            client: client(),
            url: url.trim_end_matches('/').to_owned(),
            timeout,
        }
    }

    /// The value of an instant query that returns one sample; `Ok(None)`
    /// when it returns none.
    pub async fn scalar(&self, query: &str) -> Result<Option<f64>, String> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(query));
        let body = get(&self.client, &url, self.timeout).await?;
        parse_query_answer(&body)
    }

    /// The fleet reading from the rate and ready-replica queries.
    pub async fn read(&self, rate_query: &str, ready_query: &str, expected: u32) -> Reading {
        let (rate, ready) = tokio::join!(self.scalar(rate_query), self.scalar(ready_query));
        match (rate, ready) {
            (Ok(Some(rate)), Ok(ready)) => {
                let ready = ready.map_or(expected, |r| r.max(0.0).round() as u32);
                Reading {
                    rate: rate.max(0.0),
                    ready,
                    stale: expected.saturating_sub(ready),
                    ..Reading::default()
                }
            }
            (rate, ready) => {
                tracing::warn!(
                    ?rate,
                    ?ready,
                    "Prometheus gave no rate: treating every edge as stale"
                );
                Reading {
                    stale: expected.max(1),
                    ..Reading::default()
                }
            }
        }
    }
}

/// `{"status":"success","data":{"resultType":"vector","result":[{"value":[t,"v"]}]}}`
/// (or `"scalar"`, `"result":[t,"v"]`).
pub fn parse_query_answer(body: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("Prometheus: {}", v["error"]));
    }
    let data = &v["data"];
    let value = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array() {
            Some(r) if r.is_empty() => return Ok(None),
            Some(r) if r.len() == 1 => &r[0]["value"][1],
            _ => return Err("Prometheus: the query must return one series".to_owned()),
        },
        Some("scalar") => &data["result"][1],
        other => return Err(format!("Prometheus: result type {other:?}")),
    };
    value
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .map(Some)
        .ok_or_else(|| format!("Prometheus: bad value {value}"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The ready addresses of a Service's Endpoints, from the Kubernetes API.
pub struct Endpoints {
    api: kube::Api<k8s_openapi::api::core::v1::Endpoints>,
    service: String,
    port: u16,
    timeout: Duration,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("service", &self.service)
            .finish()
    }
}

impl Endpoints {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        service: &str,
        port: u16,
        timeout: Duration,
    ) -> Endpoints {
        Endpoints {
            api: kube::Api::namespaced(client, namespace),
            service: service.to_owned(),
            port,
            timeout,
        }
    }

    /// `ip:port` of every ready address (not-ready ones are left out: they
    /// count as stale against the actuator's replica count).
    pub async fn targets(&self) -> Result<Vec<String>, String> {
        let e = tokio::time::timeout(self.timeout, self.api.get(&self.service))
            .await
            .map_err(|_| "the API server did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut targets: Vec<String> = e
            .subsets
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| format!("{}:{}", a.ip, self.port))
            .collect();
        targets.sort();
        targets.dedup();
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sums_a_metric_over_its_labels_and_only_that_metric() {
        let text = "# HELP edgelink_http_requests_total x\n\
            # TYPE edgelink_http_requests_total counter\n\
            edgelink_http_requests_total{status=\"302\",tier=\"memory\"} 120\n\
            edgelink_http_requests_total{status=\"404\",tier=\"none\"} 3\n\
            edgelink_http_requests_total_extra 1000\n\
            edgelink_http_requests_in_flight 2\n\
            process_cpu_seconds_total 1.5e1\n";
        assert_eq!(sum_of(text, "edgelink_http_requests_total"), Some(123.0));
        assert_eq!(sum_of(text, "edgelink_http_requests_in_flight"), Some(2.0));
        assert_eq!(sum_of(text, "process_cpu_seconds_total"), Some(15.0));
        assert_eq!(sum_of(text, "edgelink_missing"), None);
        let s = Sample::parse(text).unwrap();
        assert_eq!((s.requests, s.rate_gauge), (123.0, 0.0));
        assert!(Sample::parse("up 1\n").is_none());
    }

    #[test]
    fn prometheus_answers_parse() {
        let v = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.7e9,"1234.5"]}]}}"#;
        assert_eq!(parse_query_answer(v).unwrap(), Some(1234.5));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_query_answer(empty).unwrap(), None);
        let s = r#"{"status":"success","data":{"resultType":"scalar","result":[1.7e9,"7"]}}"#;
        assert_eq!(parse_query_answer(s).unwrap(), Some(7.0));
        let err = r#"{"status":"error","error":"parse error"}"#;
        assert!(parse_query_answer(err).is_err());
        let two = r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(parse_query_answer(two).is_err());
        assert_eq!(
            percent_encode("sum(rate(x[1m]))"),
            "sum%28rate%28x%5B1m%5D%29%29"
        );
    }
}
