//! The server's TLS configuration, from PEM files: the certificate chain,
//! its private key and, for mutual TLS, the CA that client certificates
//! must chain to. rustls with the `ring` provider: pure Rust and a C
//! compiler's worth of assembly, nothing else to install.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

/// Where the TLS material lives (read again on SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required, and must chain to this CA.
    pub client_ca: Option<PathBuf>,
}

/// The crypto every TLS configuration of ours uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the files and builds the configuration new connections use.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no private key read: {e}", files.key.display()))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    // HTTP/1.1 only: the upgrade and the endpoints.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server config for "localhost" (a fresh self-signed certificate)
    /// and a client config that trusts it.
    pub(crate) fn localhost_pair() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = key.cert.der().clone();
        let private = PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    #[test]
    fn files_that_are_missing_or_not_pem_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("ndb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let junk_path = dir.join("junk.pem");
        std::fs::write(&cert_path, key.cert.pem()).unwrap();
        std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
        std::fs::write(&junk_path, "not pem").unwrap();
        let files = |cert: &Path, key: &Path, ca: Option<&Path>| TlsFiles {
            cert: cert.into(),
            key: key.into(),
            client_ca: ca.map(Into::into),
        };
        assert!(server_config(&files(&cert_path, &key_path, None)).is_ok());
        assert!(server_config(&files(&cert_path, &key_path, Some(&cert_path))).is_ok());
        let missing = dir.join("missing.pem");
        for (bad, named) in [
            (files(&missing, &key_path, None), &missing),
            (files(&junk_path, &key_path, None), &junk_path),
            (files(&cert_path, &junk_path, None), &junk_path),
            (files(&cert_path, &cert_path, None), &cert_path),
            (files(&cert_path, &key_path, Some(&junk_path)), &junk_path),
        ] {
            let error = server_config(&bad).err().unwrap();
            assert!(error.contains(&named.display().to_string()), "{error}");
        }
        // A key that is not the certificate's.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other_key = dir.join("other-key.pem");
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
        assert!(server_config(&files(&cert_path, &other_key, None)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
