//! TLS on the public listener (rustls): certificate and key from PEM files,
//! swapped in place on SIGHUP — connections already open keep theirs, new
//! ones get the new certificate.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Builds a rustls server configuration from the PEM files.
pub fn load(config: &TlsConfig, http2: bool) -> Result<Arc<ServerConfig>, String> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err("TLS needs both tls.cert_file and tls.key_file".into());
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key_file.display()))?;
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate and key don't go together: {e}"))?;
    // `h2` first when enabled (long-poll, SSE, publishing and the proxy
    // multiplex on one connection); browsers open WebSockets on an
    // HTTP/1.1 connection of their own (no RFC 8441 here).
    server.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(server))
}

/// The acceptor in use, replaceable while the gateway runs.
pub struct Tls {
    config: TlsConfig,
    /// Offer `h2` (`http2.enabled`).
    http2: bool,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    pub fn new(config: &TlsConfig, http2: bool) -> Result<Option<Tls>, String> {
        if config.cert_file.is_none() && config.key_file.is_none() {
            return Ok(None);
        }
        let server = load(config, http2)?;
        Ok(Some(Tls {
            config: config.clone(),
            http2,
            current: RwLock::new(TlsAcceptor::from(server)),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().clone()
    }

    /// Re-reads the files; on error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let server = load(&self.config, self.http2)?;
        *self.current.write() = TlsAcceptor::from(server);
        Ok(())
    }
}
