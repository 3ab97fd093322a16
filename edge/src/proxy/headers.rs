//! What the proxy does to headers: hop-by-hop headers dropped both ways,
//! the `X-Forwarded-*` set, `X-Real-IP` and `Forwarded` kept only from a
//! trusted proxy, and an `X-Request-Id` passed on or made.

use std::net::IpAddr;

use edgelink_core::net::server::Peer;
use edgelink_core::net::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, Uri};
use hyper::body::Incoming;

pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// A sane incoming `X-Request-Id` (1..=128 visible ASCII), else a new one.
pub(super) fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = format!("{:032x}", rand::random::<u128>());
            HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
        })
}

/// The headers that belong to one connection, not to the message.
pub(super) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

pub(super) fn prepare_headers(
    headers: &mut HeaderMap,
    peer: Peer,
    client_ip: IpAddr,
    trusted_peer: bool,
    uri: &Uri,
    request_id: &HeaderValue,
) {
    // The host the client asked for: an absolute-form target's authority
    // (or HTTP/2's), else `Host` (RFC 9112 §3.2.2); read before the
    // hop-by-hop headers go, which a client may name `Host` among.
    let host = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| headers.get(header::HOST).cloned());
    strip_hop_by_hop(headers);
    if !trusted_peer {
        // Claims about the client only a trusted proxy may make.
        headers.remove(&X_REAL_IP);
        headers.remove(header::FORWARDED);
    }
    // The chain is believed only from a trusted proxy; otherwise it starts here.
    let chain = if trusted_peer {
        let earlier: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if earlier.is_empty() {
            peer.addr.ip().to_string()
        } else {
            format!("{}, {}", earlier.join(", "), peer.addr.ip())
        }
    } else {
        client_ip.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if peer.tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
            headers.insert(header::HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// The upstream's answer for the client: its body streamed through.
pub(super) fn relay(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::stream(body))
}

pub(super) fn with_request_id(mut resp: Response<Body>, id: &HeaderValue) -> Response<Body> {
    resp.headers_mut().insert(X_REQUEST_ID, id.clone());
    resp
}
