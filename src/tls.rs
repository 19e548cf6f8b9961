//! TLS to PostgreSQL with rustls (no OpenSSL, so the static binary stays static),
//! following libpq's `sslmode`:
//!
//! * `disable`: plain TCP;
//! * `prefer` (the default) and `require`: TLS, the certificate not judged at
//!   all (any version, any dates: Citus's own is X.509 version 1); `prefer` falls
//!   back to plain TCP when the server has no TLS or the handshake fails (see
//!   `db`); `require` with an `sslrootcert` checks it as `verify-ca` does, as
//!   libpq does;
//! * `verify-ca`: the certificate chains to `sslrootcert`;
//! * `verify-full`: that, and it names the host connected to.
//!
//! tokio-postgres reads only `disable`, `prefer` and `require`, so `sslmode` and
//! `sslrootcert` are taken out of the connection string (`db::take_params`) and
//! the rest is left to it. `sslrootcert=system` uses the system's certificate store.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature_with_raw_key};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use x509_cert::der::{Decode, Encode};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where TLS settings come from and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system`.
    pub root_cert: Option<String>,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "disable" => Ok(Self::Disable),
            // "allow" tries plain first; prefer's order is as good for a refresher.
            "allow" | "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )),
        }
    }
}

impl SslMode {
    /// What tokio-postgres is told: whether to ask for TLS and insist on it.
    pub fn for_tokio_postgres(self) -> PgSslMode {
        match self {
            Self::Disable => PgSslMode::Disable,
            Self::Prefer => PgSslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => PgSslMode::Require,
        }
    }
}

/// A connector for `settings`; an error names what is missing or unreadable.
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let roots = match (&settings.root_cert, settings.mode) {
        (Some(root), _) => Some(load_roots(root)?),
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            let default = home_root_cert().filter(|p| p.exists()).ok_or_else(|| {
                "sslmode verify-ca and verify-full need a root certificate: set sslrootcert \
                 (a PEM file, or \"system\" for the system's store) in the URL or PGSSLROOTCERT"
                    .to_owned()
            })?;
            Some(load_roots(&default.display().to_string())?)
        }
        (None, _) => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (roots, settings.mode) {
        (None, _) => Arc::new(AcceptAnyCertificate(provider)),
        (Some(roots), mode) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's default root certificate: `~/.postgresql/root.crt`.
fn home_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
}

fn load_roots(source: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if source == "system" {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("sslrootcert=system: no certificates in the system's store".into());
        }
        return Ok(roots);
    }
    let certs = CertificateDer::pem_file_iter(source)
        .map_err(|e| format!("cannot read sslrootcert {source:?}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("cannot read sslrootcert {source:?}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {source:?}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {source:?} holds no certificate"));
    }
    Ok(roots)
}

/// `prefer` and `require` without a root certificate: encrypted, unverified,
/// like libpq: any certificate is taken, whatever its version, dates or name.
/// Citus's coordinators serve a self-signed X.509 version 1 certificate whose
/// validity ends when it starts, which webpki refuses even to parse; the
/// handshake's signatures are still checked, with the certificate's public key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

/// The public key of a certificate of any X.509 version.
fn public_key(
    cert: &CertificateDer<'_>,
) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    let bad = |_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).map_err(bad)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(bad)?;
    Ok(SubjectPublicKeyInfoDer::from(spki))
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        // TLS 1.2 names the signature scheme loosely: try each algorithm it may
        // mean, as rustls does for a parsed certificate.
        let spki = public_key(cert)?;
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let algorithms = self
            .0
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algorithms)| *algorithms)
            .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        for algorithm in algorithms {
            match key.verify_signature(*algorithm, message, dss.signature()) {
                Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
                Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => continue,
                Err(_) => break,
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &public_key(cert)?,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        assert!(
            connector(&settings)
                .err()
                .unwrap()
                .contains("/nonexistent/ca.pem")
        );
        assert!("verify_full".parse::<SslMode>().is_err());
    }
}
