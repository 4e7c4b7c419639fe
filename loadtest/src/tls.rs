//! TLS on the client side: one rustls configuration built from the flags,
//! and a rustls connection driven without blocking inside a mio loop.
//!
//! Owns: the crypto provider (ring, named here rather than left to a
//! process default, so nothing pulls in aws-lc-rs), which server
//! certificates are accepted ([`Trust`]), our own certificate for mutual
//! TLS ([`Identity`]), and the ciphertext side of a
//! non-blocking connection ([`TlsStream`]). Knows nothing of WebSocket or
//! RESP: what goes in and comes out is plaintext.
//!
//! [`TlsStream`] is sans-I/O rustls fed by hand: ciphertext is read from the
//! socket into a buffer of our own with one `read` of up to 64 KiB (rustls's
//! own `read_tls` reads 4 KiB at a time), handed to rustls, and the
//! plaintext copied out; writes encrypt into rustls's buffer and push the
//! records out until the socket is full. Its `read` keeps the contract the
//! driver relies on for edge-triggered readiness: a read shorter than the
//! buffer means the socket was empty.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Which server certificates a TLS connection accepts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Those that chain to Mozilla's roots (the `webpki-roots` crate, built
    /// in, so a run does not depend on the machine's certificate store).
    Roots,
    /// Those that chain to these (`--tls-ca`).
    Ca(Arc<Vec<CertificateDer<'static>>>),
    /// Any (`--insecure`): for self-signed test certificates.
    Any,
}

/// The TLS flags: which servers to trust, and who we are.
#[derive(Clone, Debug)]
pub struct Options {
    pub trust: Trust,
    /// `--tls-cert`/`--tls-key`: for a server that asks for a client
    /// certificate (mutual TLS); none by default.
    pub identity: Option<Identity>,
}

/// Our certificate chain and its key, shown to a server that asks.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The key file as read, for ureq (whose key type wants its own kind tag).
    pub key_pem: Arc<Vec<u8>>,
}

/// Never prints the key.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, String> {
        let chain = load_certificates("--tls-cert", cert)?;
        let fail = |e: &dyn std::fmt::Display| format!("--tls-key {}: {e}", key.display());
        let key_pem = std::fs::read(key).map_err(|e| fail(&e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| fail(&e))?;
        Ok(Identity {
            chain,
            key: Arc::new(key),
            key_pem: Arc::new(key_pem),
        })
    }
}

/// What a TLS connection to the target is opened with.
#[derive(Clone, Debug)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    /// The name the certificate must carry (and SNI, for a DNS name).
    pub name: ServerName<'static>,
}

impl Tls {
    /// `host` is the URL's authority: `name[:port]` or `[v6][:port]`.
    pub fn new(options: &Options, host: &str) -> Result<Tls, String> {
        let bare = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| format!("--url: {bare:?} is no TLS server name: {e}"))?;
        Ok(Tls {
            config: client_config(options)?,
            name,
        })
    }

    pub fn connection(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(Arc::clone(&self.config), self.name.clone()).map_err(io::Error::other)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2 with ring's cipher suites in rustls's order (AES-256-GCM
/// first for 1.3); a client certificate only when given one.
pub fn client_config(options: &Options) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &options.trust {
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
        Trust::Roots => builder.with_root_certificates(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        Trust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs.iter() {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("--tls-ca: a certificate rustls refuses: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let config = match &options.identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
    };
    Ok(Arc::new(config))
}

/// The certificates of a PEM file (given as `flag`); at least one.
pub fn load_certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"no CERTIFICATE in it"));
    }
    Ok(certs)
}

/// `--insecure`: any certificate is taken for the server's, but the
/// handshake's signatures are checked as usual (against the key in the
/// certificate shown), so the connection costs what a verified one does
/// after the handshake.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Says what a failed TLS handshake means for the flags.
pub fn explain(e: io::Error) -> io::Error {
    use rustls::{CertificateError, OtherError};
    let hint = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))))
            if other.to_string().contains("CaUsedAsEndEntity") =>
        {
            " (the server's certificate says it is a CA, which webpki refuses as a \
             server's own; a self-signed one made by `openssl req -x509` needs \
             `-addext basicConstraints=critical,CA:FALSE` to pass --tls-ca; or --insecure)"
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (a self-signed or private certificate? pass --tls-ca FILE, or --insecure)"
        }
        _ => "",
    };
    io::Error::new(e.kind(), format!("TLS handshake: {e}{hint}"))
}

/// The protocol, cipher suite and key exchange a connection agreed on, e.g.
/// `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`.
fn describe(conn: &ClientConnection) -> String {
    let version = conn
        .protocol_version()
        .map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
    let group = conn
        .negotiated_key_exchange_group()
        .map_or_else(|| "?".to_string(), |g| format!("{:?}", g.name()));
    format!("{version} {suite} {group}")
}

/// Ciphertext buffered between the socket and rustls, per connection.
const CIPHER_BUF: usize = 64 * 1024;

/// A client TLS connection over a non-blocking socket, handshake done.
pub struct TlsStream {
    conn: ClientConnection,
    sock: TcpStream,
    /// Ciphertext read from the socket and not yet handed to rustls:
    /// `cipher[pos..end]`.
    cipher: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl TlsStream {
    /// `sock` must be non-blocking.
    pub fn new(conn: ClientConnection, sock: TcpStream) -> TlsStream {
        TlsStream {
            conn,
            sock,
            cipher: vec![0u8; CIPHER_BUF].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// See [`describe`].
    pub fn describe(&self) -> String {
        describe(&self.conn)
    }

    /// Plaintext into `dst`: as much as there is, reading the socket until
    /// `dst` is full or the socket is empty. `Ok(n)` with `n < dst.len()`
    /// only when the socket was found empty (or at its end), so
    /// edge-triggered readiness will say when more comes; `WouldBlock` when
    /// there is nothing yet; `Ok(0)` at the end of the stream.
    pub fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let mut total = 0;
        let mut socket_empty = false;
        loop {
            while total < dst.len() {
                match self.conn.reader().read(&mut dst[total..]) {
                    // The server's close_notify: nothing more comes.
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // Said on the next call, which finds it again.
                    Err(_) if total > 0 => return Ok(total),
                    Err(e) => return Err(e),
                }
            }
            if total == dst.len() {
                return Ok(total);
            }
            if self.pos < self.end {
                // rustls takes what fits its record buffer; the rest stays.
                let n = self.conn.read_tls(&mut &self.cipher[self.pos..self.end])?;
                if n == 0 {
                    // rustls takes nothing after the server's close_notify.
                    return Ok(total);
                }
                self.pos += n;
                self.process()?;
                continue;
            }
            if socket_empty {
                return if total > 0 {
                    Ok(total)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            match self.sock.read(&mut self.cipher) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.pos = 0;
                    self.end = n;
                    socket_empty = n < self.cipher.len();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket_empty = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Decrypts what rustls was handed; sends what that asks to send (an
    /// alert, a key update's answer).
    fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            // The alert that says why, best effort.
            let _ = self.push();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        self.push().map(|_| ())
    }

    /// Encrypts a prefix of `src` and sends what it can; `Ok(n)`: `n` bytes
    /// of `src` are taken (maybe still in rustls's buffer: [`TlsStream::flush`]
    /// sends them once the socket has room). `WouldBlock` while earlier
    /// records are still waiting for room.
    pub fn write(&mut self, src: &[u8]) -> io::Result<usize> {
        if !self.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(src)?;
        self.push()?;
        if n == 0 && !src.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends the records rustls holds, as far as the socket takes them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.push().map(|_| ())
    }

    /// Writes records until none are left (`true`) or the socket is full.
    fn push(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Ends the TLS session (close_notify), best effort.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.push();
    }
}
