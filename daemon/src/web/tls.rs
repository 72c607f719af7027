//! TLS on core4d's own listener: the certificate and key from `[tls]` (PEM files), served to
//! every new handshake from a slot that a reload (SIGHUP) replaces. Open connections keep the
//! session they negotiated; nothing is dropped.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// The certificate currently served, and where to read the next one from.
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads both files; the error is one line naming the key at fault and the fix.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(cert_file, key_file, &provider)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again and serves the new certificate to new handshakes. On error the
    /// previous certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let key = read_pair(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The acceptor for the listener: HTTP/1.1 only (ALPN), TLS 1.2 and 1.3.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, String> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let unreadable = |key: &str, path: &Path, e: &dyn std::fmt::Display, what: &str| {
        format!(
            "{key}: cannot use {} ({e}): point {key} at {what} that core4d can read",
            path.display()
        )
    };
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| unreadable("tls.cert_file", cert_file, &e, "a PEM certificate chain"))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable("tls.cert_file", cert_file, &e, "a PEM certificate chain"))?;
    if chain.is_empty() {
        return Err(unreadable(
            "tls.cert_file",
            cert_file,
            &"no CERTIFICATE block",
            "a PEM certificate chain",
        ));
    }
    let key_pem = std::fs::read(key_file)
        .map_err(|e| unreadable("tls.key_file", key_file, &e, "a PEM private key"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| unreadable("tls.key_file", key_file, &e, "a PEM private key"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "tls.key_file: {} does not fit the certificate in {} ({e}): set tls.key_file to the \
             private key of tls.cert_file",
            key_file.display(),
            cert_file.display()
        )
    })
}
