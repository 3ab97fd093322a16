//! What a client did wrong. A client's bad, slow or aborted input is that
//! client's 4xx and is counted here by reason
//! (`edgelink_client_faults_total`), never against a backend or an
//! upstream: the proxy checks [`ClientFault`] before it blames a host.

use std::sync::Arc;

use http::StatusCode;
use metrics::Counter;

/// Why a request was refused as the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientFault {
    /// Ambiguous or malformed framing: `Content-Length` with
    /// `Transfer-Encoding`, a repeated or listed `Content-Length`, a
    /// `Transfer-Encoding` other than `chunked`, a head that does not parse.
    BadFraming,
    /// An HTTP/1.1 request without exactly one valid `Host`.
    BadHost,
    /// A request head over `server.max_header_bytes`.
    HeadTooLarge,
    /// A body that does not parse (bad chunk framing).
    BodyMalformed,
    /// The client went away, or reset its stream, before its body ended.
    BodyAborted,
    /// A body over its limit.
    BodyTooLarge,
    /// A body slower than `server.body_read_timeout_ms` for one read or
    /// `server.body_timeout_ms` for the whole.
    BodySlow,
}

impl ClientFault {
    pub const ALL: [ClientFault; 7] = [
        ClientFault::BadFraming,
        ClientFault::BadHost,
        ClientFault::HeadTooLarge,
        ClientFault::BodyMalformed,
        ClientFault::BodyAborted,
        ClientFault::BodyTooLarge,
        ClientFault::BodySlow,
    ];

    /// The `reason` label of `edgelink_client_faults_total`.
    pub fn label(self) -> &'static str {
        match self {
            ClientFault::BadFraming => "bad_framing",
            ClientFault::BadHost => "bad_host",
            ClientFault::HeadTooLarge => "head_too_large",
            ClientFault::BodyMalformed => "body_malformed",
            ClientFault::BodyAborted => "body_aborted",
            ClientFault::BodyTooLarge => "body_too_large",
            ClientFault::BodySlow => "body_slow",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ClientFault::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ClientFault::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ClientFault::BodySlow => StatusCode::REQUEST_TIMEOUT,
            ClientFault::BadFraming
            | ClientFault::BadHost
            | ClientFault::BodyMalformed
            | ClientFault::BodyAborted => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error.code` of the JSON answer.
    pub fn code(self) -> &'static str {
        match self {
            ClientFault::BadFraming => "bad_framing",
            ClientFault::BadHost => "bad_host",
            ClientFault::HeadTooLarge => "head_too_large",
            ClientFault::BodyMalformed => "bad_body",
            ClientFault::BodyAborted => "body_aborted",
            ClientFault::BodyTooLarge => "body_too_large",
            ClientFault::BodySlow => "body_timeout",
        }
    }
}

/// `edgelink_client_faults_total`, one handle per reason; cloning shares
/// them. [`ClientFaults::default`] counts nowhere.
#[derive(Clone, Default)]
pub struct ClientFaults(Option<Arc<[Counter; ClientFault::ALL.len()]>>);

/// The counter's name, shared by every role that counts client faults.
pub const CLIENT_FAULTS_TOTAL: &str = "edgelink_client_faults_total";

impl ClientFaults {
    /// Registers one counter per reason with the current recorder (call it
    /// inside the role's `metrics::with_local_recorder`).
    pub fn register() -> ClientFaults {
        metrics::describe_counter!(
            CLIENT_FAULTS_TOTAL,
            "Requests refused as the client's fault (bad framing or Host, a head too large, a body malformed, aborted, too large or too slow), by reason."
        );
        ClientFaults(Some(Arc::new(ClientFault::ALL.map(
            |f| metrics::counter!(CLIENT_FAULTS_TOTAL, "reason" => f.label()),
        ))))
    }

    pub fn count(&self, fault: ClientFault) {
        if let Some(counters) = &self.0 {
            counters[fault as usize].increment(1);
        }
    }
}

impl std::fmt::Debug for ClientFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientFaults")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_is_a_client_error_with_its_own_label() {
        let mut labels = std::collections::HashSet::new();
        for (i, f) in ClientFault::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "ALL is in declaration order");
            assert!(f.status().is_client_error(), "{f:?}");
            assert!(labels.insert(f.label()), "{f:?}");
        }
    }
}
