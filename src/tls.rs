//! TLS for the HTTPS origin and RTMPS ingest: one certificate chain and key from PEM files,
//! shared by both listeners and replaced in place on reload, so that a renewed certificate
//! (certbot, cert-manager) applies to new connections without a restart while connections
//! already open keep the one they negotiated.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificates: {reason}")]
    Certificates { path: String, reason: String },
    #[error("{path}: no certificate in the file (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate { path: String },
    #[error("{path}: cannot read the private key: {reason}")]
    Key { path: String, reason: String },
    #[error("the private key in {key} does not belong to the first certificate in {cert}: {reason}")]
    Mismatch { cert: String, key: String, reason: String },
}

/// The certificate both TLS listeners present; [`Certificates::reload`] swaps it.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl Certificates {
    /// Loads the chain and key the configuration names.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_pair(config, &provider)?;
        Ok(Arc::new(Self { current: RwLock::new(Arc::new(key)), provider }))
    }

    /// Reads the files again (possibly at new paths). On any error the certificate in use stays.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let key = load_pair(config, &self.provider)?;
        *crate::sync::write(&self.current) = Arc::new(key);
        Ok(())
    }

    /// An acceptor for a listener: TLS 1.2 and 1.3, ALPN as given (most preferred first).
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> TlsAcceptor {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            // The ring provider supports every safe default version; failing here is a build defect.
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let mut config = builder.with_no_client_auth().with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        crate::sync::read(&self.current).clone()
    }
}

/// The resolver handed to rustls: whatever certificate is current when a handshake starts.
#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn load_pair(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&config.cert_file)?;
    let key = read_key(&config.key_file)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: config.cert_file.display().to_string(),
        key: config.key_file.display().to_string(),
        reason: e.to_string(),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = || path.display().to_string();
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates { path: shown(), reason: pem_reason(e) })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: shown() });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Key { path: path.display().to_string(), reason: pem_reason(e) })
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM block of the expected kind in the file".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate and key for `localhost`, made with the openssl CLI.
    pub(crate) fn self_signed(dir: &Path, name: &str) -> TlsConfig {
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key_file)
            .arg("-out")
            .arg(&cert_file)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl req failed");
        TlsConfig { cert_file, key_file }
    }

    #[test]
    fn loads_a_pair_and_rejects_a_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a");
        let b = self_signed(dir.path(), "b");
        let certs = Certificates::load(&a).expect("a valid pair loads");
        let first = certs.current();

        let mixed = TlsConfig { cert_file: a.cert_file.clone(), key_file: b.key_file.clone() };
        let err = certs.reload(&mixed).expect_err("a key of another certificate is refused");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert!(Arc::ptr_eq(&first, &certs.current()), "a failed reload keeps the certificate in use");

        certs.reload(&b).expect("another valid pair loads");
        assert_ne!(certs.current().cert, first.cert, "the reload replaced the certificate");
    }

    #[test]
    fn missing_and_malformed_files_say_which_file_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let good = self_signed(dir.path(), "good");
        let missing = TlsConfig { cert_file: dir.path().join("nope.crt"), key_file: good.key_file.clone() };
        let err = Certificates::load(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.crt") && err.contains("No such file"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err =
            Certificates::load(&TlsConfig { cert_file: garbage.clone(), key_file: good.key_file.clone() }).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        // A certificate where the key should be.
        let err =
            Certificates::load(&TlsConfig { cert_file: good.cert_file.clone(), key_file: good.cert_file }).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
    }
}
