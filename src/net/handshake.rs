//! The server side of the WebSocket opening handshake (RFC 6455 §4.2).
//!
//! Done here rather than by `tungstenite::accept` so that a request that is
//! HTTP but not an upgrade gets `400` before the close, bytes that are not
//! HTTP close at once, the request size is bounded, and the caller can time
//! a slow handshake out without any thread waiting on it. The accept key is
//! tungstenite's own `derive_accept_key`; after the 101 the connection is
//! handed to tungstenite with whatever bytes followed the request.

use tungstenite::handshake::derive_accept_key;

use crate::security::Credentials;

/// Largest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request head is not complete yet: read more.
    Incomplete,
    /// A valid upgrade: send `response`, then speak WebSocket; the request
    /// head was `head_len` bytes, anything after it is WebSocket data.
    Upgrade {
        response: Vec<u8>,
        head_len: usize,
        authorization: Authorization,
    },
    /// A plain `GET` of one of the server's HTTP endpoints: the caller
    /// answers it, then closes.
    Endpoint(Endpoint, Authorization),
    /// HTTP, but not an acceptable upgrade: send `response`, then close.
    Refuse { response: &'static [u8] },
    /// Not HTTP at all: close without a word.
    NotHttp,
}

/// What the request's `Authorization` header said.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization {
    Absent,
    Basic(Credentials),
    /// Present, but not Basic credentials we can read.
    Malformed,
}

/// The HTTP endpoints served on the WebSocket port (see `docs/PROTOCOL.md`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/healthz`: the process serves.
    Health,
    /// `/readyz`: start-up loading is done and shutdown has not begun.
    Ready,
    /// `/metrics`: the Prometheus exposition.
    Metrics,
}

impl Endpoint {
    fn at(path: &str) -> Option<Endpoint> {
        // A query string changes nothing (probes add cache busters).
        match path.split('?').next() {
            Some("/healthz") => Some(Endpoint::Health),
            Some("/readyz") => Some(Endpoint::Ready),
            Some("/metrics") => Some(Endpoint::Metrics),
            _ => None,
        }
    }
}

/// The answer when the server holds all the connections it may.
pub const SERVER_FULL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// The answer to wrong credentials (and to a scrape without any, when the
/// server has users).
pub const UNAUTHORIZED: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"nemesisdb\", charset=\"UTF-8\"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const BAD_VERSION: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n";

/// A whole HTTP/1.1 answer (the connection closes after it).
pub fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// [`http_response`] with a plain-text body.
pub fn http_text(status: u16, body: &str) -> Vec<u8> {
    http_response(status, "text/plain; charset=utf-8", body.as_bytes())
}

/// Examines the request bytes received so far.
pub fn examine(received: &[u8]) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(received) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if received.len() >= MAX_REQUEST_BYTES => {
            return Outcome::Refuse {
                response: BAD_REQUEST,
            };
        }
        Ok(httparse::Status::Partial) => return Outcome::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Outcome::Refuse {
                response: BAD_REQUEST,
            };
        }
        Err(_) => return Outcome::NotHttp,
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let authorization = match request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Authorization"))
    {
        None => Authorization::Absent,
        Some(h) => {
            Credentials::from_basic(h.value).map_or(Authorization::Malformed, Authorization::Basic)
        }
    };
    // A browser's upgrade (it sends Origin) carries Basic credentials only
    // from its cache, on behalf of whatever page opened the socket: they
    // are not used, lest any site act as a user who once typed them in.
    // Browsers authenticate with SV_AUTH.
    let authorization = match header("Origin") {
        Some(_) => Authorization::Absent,
        None => authorization,
    };
    let is_upgrade = request.method == Some("GET")
        && request.version == Some(1)
        && has_token("Upgrade", "websocket")
        && has_token("Connection", "upgrade");
    if !is_upgrade
        && request.method == Some("GET")
        && let Some(endpoint) = request.path.and_then(Endpoint::at)
    {
        return Outcome::Endpoint(endpoint, authorization);
    }
    let key = header("Sec-WebSocket-Key")
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Outcome::Refuse {
            response: BAD_REQUEST,
        };
    };
    if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Outcome::Refuse {
            response: BAD_VERSION,
        };
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    Outcome::Upgrade {
        response: response.into_bytes(),
        head_len,
        authorization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn accepts_an_upgrade_and_keeps_trailing_bytes() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x85");
        match examine(&bytes) {
            Outcome::Upgrade {
                response,
                head_len,
                authorization,
            } => {
                assert_eq!(head_len, UPGRADE.len());
                assert_eq!(authorization, Authorization::Absent);
                let text = String::from_utf8(response).unwrap();
                // The RFC's own example key and answer.
                assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
                assert!(text.starts_with("HTTP/1.1 101 "));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_for_the_whole_head() {
        assert_eq!(examine(&UPGRADE.as_bytes()[..30]), Outcome::Incomplete);
        assert_eq!(examine(b""), Outcome::Incomplete);
    }

    #[test]
    fn refuses_plain_http_and_bad_versions() {
        let plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            examine(plain),
            Outcome::Refuse {
                response: BAD_REQUEST
            }
        );
        let post = UPGRADE.replace("GET", "POST");
        assert!(matches!(examine(post.as_bytes()), Outcome::Refuse { .. }));
        let v8 = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(
            examine(v8.as_bytes()),
            Outcome::Refuse {
                response: BAD_VERSION
            }
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST_BYTES));
        assert!(matches!(examine(huge.as_bytes()), Outcome::Refuse { .. }));
    }

    #[test]
    fn plain_gets_of_the_endpoints_are_theirs_and_upgrades_stay_upgrades() {
        for (path, endpoint) in [
            ("/healthz", Endpoint::Health),
            ("/readyz?x=1", Endpoint::Ready),
            ("/metrics", Endpoint::Metrics),
        ] {
            let get = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                examine(get.as_bytes()),
                Outcome::Endpoint(endpoint, Authorization::Absent)
            );
            let post = format!("POST {path} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(matches!(examine(post.as_bytes()), Outcome::Refuse { .. }));
        }
        let other = b"GET /metricsz HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(examine(other), Outcome::Refuse { .. }));
        let upgrade = UPGRADE.replace("GET /x", "GET /metrics");
        assert!(matches!(
            examine(upgrade.as_bytes()),
            Outcome::Upgrade { .. }
        ));
    }

    #[test]
    fn the_authorization_header_is_read_as_basic_credentials() {
        let with = |value: &str| {
            let request = UPGRADE.replace(
                "Host: a\r\n",
                &format!("Host: a\r\nauthorization: {value}\r\n"),
            );
            match examine(request.as_bytes()) {
                Outcome::Upgrade { authorization, .. } => authorization,
                other => panic!("{other:?}"),
            }
        };
        // "ann:pw"
        assert_eq!(
            with("Basic YW5uOnB3"),
            Authorization::Basic(Credentials {
                user: "ann".into(),
                password: "pw".into()
            })
        );
        assert_eq!(with("Bearer xyz"), Authorization::Malformed);
        // From a browser, credentials are its cache's, not the page's.
        assert_eq!(
            with("Basic YW5uOnB3\r\nOrigin: https://example.com"),
            Authorization::Absent
        );
        let scrape = b"GET /metrics HTTP/1.1\r\nAuthorization: Basic YW5uOnB3\r\n\r\n";
        assert!(matches!(
            examine(scrape),
            Outcome::Endpoint(Endpoint::Metrics, Authorization::Basic(_))
        ));
    }

    #[test]
    fn closes_on_bytes_that_are_not_http() {
        assert_eq!(examine(b"\x16\x03\x01\x00\xa5hello"), Outcome::NotHttp);
        assert_eq!(examine(b"{\"SH_NEW\":{}}\r\n\r\n"), Outcome::NotHttp);
    }
}
