//! The sockets the edge serves, and the answers of its two small
//! listeners: the admin listener (`/metrics`, `/healthz`, mounted
//! `/admin/...`) and the plain-HTTP one that redirects to HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;

use edgelink_core::config::Config;
use edgelink_core::net::{listener, read_body, server, BodyLimits};
use edgelink_core::shutdown::CancellationToken;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::app::App;
use crate::domain::NO_STORE;
use crate::mounts::Route;
use crate::respond::{self, failure, Body, Failure};

/// The bound sockets `run` serves.
#[derive(Debug)]
pub struct Listeners {
    /// One or more listeners on the same address (`SO_REUSEPORT`); each is
    /// served by its own thread when there are several.
    pub public: Vec<std::net::TcpListener>,
    pub admin: std::net::TcpListener,
    /// The plain-HTTP listener that redirects to HTTPS (`tls.redirect_listen`).
    pub redirect: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config.server`: one public listener per
    /// worker in per-core mode, one in work-stealing mode.
    pub fn bind(config: &Config) -> std::io::Result<Listeners> {
        let s = &config.server;
        Ok(Listeners {
            public: listener::bind_many(s.listen, s.public_listeners(), s.backlog)?,
            admin: listener::bind(s.admin_listen, s.backlog)?,
            redirect: match config.tls.redirect_listen {
                Some(addr) => Some(listener::bind(addr, s.backlog)?),
                None => None,
            },
        })
    }

    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        match self.public.first() {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::other("no public listener")),
        }
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Serves each of `publics` on a thread of its own with a single-threaded
/// runtime (per-core mode).
pub(crate) fn serve_on_threads<L, H, F>(
    publics: impl Iterator<Item = std::net::TcpListener>,
    options: &server::Options<L>,
    handler: &H,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<std::io::Result<()>>>>
where
    L: server::Lane,
    H: Fn(Request<Incoming>, server::Peer) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let mut threads = Vec::new();
    for (i, listener) in publics.enumerate() {
        let (options, handler, shutdown) = (options.clone(), handler.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("edgelink-io-{}", i + 1))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    server::serve(listener, options, handler, shutdown).await;
                    Ok(())
                })
            })?;
        threads.push(thread);
    }
    Ok(threads)
}

/// Serves the plain-HTTP listener, if any: `/healthz` and `/readyz` as
/// the public listener answers them, everything else a 308 to HTTPS.
pub(crate) async fn serve_redirect(
    listener: Option<tokio::net::TcpListener>,
    options: server::Options,
    app: Arc<App>,
    config: &Config,
    shutdown: CancellationToken,
) {
    let Some(listener) = listener else { return };
    let https_port = config.tls.https_port;
    let handler = move |req: Request<Incoming>, peer| {
        let app = app.clone();
        async move {
            match req.uri().path() {
                "/healthz" | "/readyz" => app.serve(req, peer).await,
                _ => to_https(&req, https_port),
            }
        }
    };
    server::serve(listener, options, handler, shutdown).await;
}

/// Serves the admin listener: `/metrics` from `renderers`, `/healthz`, and
/// a mounted `/admin/...` route (its body read under `body`).
pub(crate) async fn serve_admin(
    listener: tokio::net::TcpListener,
    config: &Config,
    renderers: Vec<PrometheusHandle>,
    mount: Option<Route>,
    body: BodyLimits,
    shutdown: CancellationToken,
) {
    let renderers = Arc::new(renderers);
    let handler = move |req: Request<Incoming>, _peer| {
        let (renderers, mount) = (renderers.clone(), mount.clone());
        async move { admin(req, &renderers, mount.as_ref(), body).await }
    };
    server::serve(
        listener,
        server::Options::internal(&config.server),
        handler,
        shutdown,
    )
    .await;
}

/// The admin listener's answer: a mounted `/admin/...` route (its body
/// read under `body`), else `/metrics` from `renderers` and `/healthz`.
async fn admin(
    req: Request<Incoming>,
    renderers: &[PrometheusHandle],
    mount: Option<&Route>,
    body: BodyLimits,
) -> Response<Body> {
    match mount {
        Some(route) if req.uri().path().starts_with("/admin/") => {
            let (parts, incoming) = req.into_parts();
            match read_body(incoming, body, &Default::default()).await {
                Ok(bytes) => route(Request::from_parts(parts, Full::new(bytes))).await,
                Err(e) => e.response(),
            }
        }
        _ => admin_route(renderers, &req),
    }
}

fn admin_route(renderers: &[PrometheusHandle], req: &Request<Incoming>) -> Response<Body> {
    edgelink_core::net::admin_basics(req.method(), req.uri().path(), || {
        renderers.iter().map(PrometheusHandle::render).collect()
    })
    .unwrap_or_else(|| failure(Failure::NotFound))
}

/// The plain-HTTP listener's answer: 308 to the same target over HTTPS.
fn to_https(req: &Request<Incoming>, port: u16) -> Response<Body> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return failure(Failure::NoHost);
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        443 => format!("https://{}{target}", host.host()),
        port => format!("https://{}:{port}{target}", host.host()),
    };
    match http::HeaderValue::from_str(&location) {
        Ok(location) => respond::redirect(StatusCode::PERMANENT_REDIRECT, location, NO_STORE),
        Err(_) => failure(Failure::NoHost),
    }
}
