//! Upstream TLS (`rediss://`): the rustls client configuration built from `[upstream.tls]`
//! — the CA to verify the upstream with (a PEM file, or the Mozilla roots compiled in), an
//! optional client certificate for mutual TLS, the name to verify and send as SNI, and the
//! insecure switch that skips verification.
//!
//! [`TlsSetup::load`] reads and parses every file once; [`crate::config::Config::validate`]
//! calls it at start so that a missing or malformed file is a configuration error naming
//! its key, never a surprise on the first connect.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, TlsConfig, UpstreamUrl};

/// What connecting over TLS needs, loaded once.
#[derive(Clone)]
pub struct TlsSetup {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// Certificate verification is off (`insecure_skip_verify`).
    pub insecure: bool,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup").field("server_name", &self.server_name).field("insecure", &self.insecure).finish()
    }
}

fn invalid(key: &'static str, value: impl fmt::Display, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), reason: reason.to_string() }
}

impl TlsSetup {
    /// Builds the client configuration for `url` (which must be `rediss://`) from `[upstream.tls]`.
    /// Errors name the key, the file and what is wrong with it.
    pub fn load(url: &UpstreamUrl, cfg: &TlsConfig) -> Result<TlsSetup, ConfigError> {
        let name = cfg.server_name.clone().unwrap_or_else(|| url.host.clone());
        let key = if cfg.server_name.is_some() { "upstream.tls.server_name" } else { "upstream.url" };
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            invalid(key, &name, format!("not a DNS name or IP address to verify the upstream as ({e})"))
        })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("upstream.tls", "", e))?;
        let builder = if cfg.insecure_skip_verify {
            if let Some(ca) = &cfg.ca_file {
                return Err(invalid(
                    "upstream.tls.ca_file",
                    ca.display(),
                    "has no effect with insecure_skip_verify = true; remove one of them",
                ));
            }
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let mut roots = RootCertStore::empty();
            match &cfg.ca_file {
                Some(path) => {
                    let certs = read_certs("upstream.tls.ca_file", path)?;
                    for cert in certs {
                        roots.add(cert).map_err(|e| {
                            invalid("upstream.tls.ca_file", path.display(), format!("not a usable CA certificate: {e}"))
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key_path)) => {
                let chain = read_certs("upstream.tls.cert_file", cert)?;
                let key = read_key(key_path)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid("upstream.tls.key_file", key_path.display(), format!("does not match cert_file: {e}"))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(invalid(
                    "upstream.tls.key_file",
                    "",
                    format!("must be set with cert_file ({})", cert.display()),
                ))
            }
            (None, Some(key)) => {
                return Err(invalid(
                    "upstream.tls.cert_file",
                    "",
                    format!("must be set with key_file ({})", key.display()),
                ))
            }
        };
        Ok(TlsSetup {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            insecure: cfg.insecure_skip_verify,
        })
    }

    /// The name the upstream's certificate is verified against (and sent as SNI).
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// Runs the TLS handshake on a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, path.display(), format!("cannot read: {e}")))
}

/// Every certificate in a PEM file; at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| invalid(key, path.display(), format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path.display(), "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let key = "upstream.tls.key_file";
    let bytes = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            invalid(key, path.display(), "holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        }
        e => invalid(key, path.display(), format!("not a PEM private key file: {e}")),
    })
}

/// `insecure_skip_verify`: accepts any certificate, but still checks the handshake
/// signatures (so the connection is encrypted, just not authenticated).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
