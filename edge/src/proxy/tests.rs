use super::headers::*;
use super::*;
use http::header::HeaderName;

#[test]
fn hop_by_hop_headers_go_including_those_connection_names() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-secret"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
        ("content-type", "application/json"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, ["content-type"]);
}

#[test]
fn the_host_asked_for_survives_connection_and_absolute_form() {
    let peer = Peer {
        addr: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
        tls: false,
    };
    let prepared = |uri: &str, headers: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let uri: Uri = uri.parse().unwrap_or_else(|e| panic!("{e}"));
        let id = HeaderValue::from_static("id");
        prepare_headers(&mut h, peer, peer.addr.ip(), false, &uri, &id);
        (
            h.get(header::HOST).cloned(),
            h.get(&X_FORWARDED_HOST).cloned(),
        )
    };
    let sho = Some(HeaderValue::from_static("sho.rt"));
    assert_eq!(
        prepared("/api/x", &[("host", "sho.rt"), ("connection", "host")]),
        (sho.clone(), sho.clone())
    );
    assert_eq!(
        prepared("http://sho.rt/api/x", &[("host", "evil.example")]),
        (sho.clone(), sho)
    );
}

#[test]
fn request_ids_are_passed_on_when_sane() {
    let mut h = HeaderMap::new();
    h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
    assert_eq!(request_id(&h), "abc-123");
    h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
    let fresh = request_id(&h);
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, request_id(&HeaderMap::new()));
}
