//! Serving HTTP, shared by every role: listeners built with socket2 and the
//! hyper accept loop (connection cap, header-read timeout, graceful drain).

pub mod listener;
pub mod server;

/// The body of every response a role makes: one buffer, sent as is.
pub type Body = http_body_util::Full<bytes::Bytes>;
