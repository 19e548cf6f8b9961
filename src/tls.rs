//! TLS to PostgreSQL with rustls (no OpenSSL, so the static binary stays static),
//! following libpq's `sslmode`:
//!
//! * `disable`: plain TCP;
//! * `prefer` (the default) and `require`: TLS (`prefer` falls back to plain TCP
//!   when the server has no TLS), the certificate not checked; `require` with an
//!   `sslrootcert` checks it as `verify-ca` does, as libpq does;
//! * `verify-ca`: the certificate chains to `sslrootcert`;
//! * `verify-full`: that, and it names the host connected to.
//!
//! tokio-postgres reads only `disable`, `prefer` and `require`, so `sslmode` and
//! `sslrootcert` are taken out of the connection string here and the rest is left
//! to it. `sslrootcert=system` uses the system's certificate store.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

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

/// Takes `sslmode` and `sslrootcert` out of a connection string, a URL
/// (`postgres://...?sslmode=verify-full`) or key=value pairs; returns the rest
/// and the two values.
pub fn take_tls_params(conn: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut keep = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            false
        }
        "sslrootcert" => {
            root = Some(value);
            false
        }
        _ => true,
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        match conn.split_once('?') {
            None => conn.to_owned(),
            Some((base, query)) => {
                let params: Vec<&str> = query
                    .split('&')
                    .filter(|param| {
                        let (key, value) = param.split_once('=').unwrap_or((param, ""));
                        keep(
                            key,
                            percent_decode_str(value).decode_utf8_lossy().into_owned(),
                        )
                    })
                    .collect();
                if params.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", params.join("&"))
                }
            }
        }
    } else {
        // key=value pairs: cut the two out and leave every other byte as it was
        // (quoted values may hold spaces).
        let mut rest = String::with_capacity(conn.len());
        let mut copied = 0;
        for token in conn.split_whitespace() {
            let start = token.as_ptr() as usize - conn.as_ptr() as usize;
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            if !keep(key, value.trim_matches('\'').to_owned()) {
                rest.push_str(&conn[copied..start]);
                copied = start + token.len();
            }
        }
        rest.push_str(&conn[copied..]);
        rest.trim().to_owned()
    };
    (rest, mode, root)
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
/// like libpq. The handshake's signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

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
    fn tls_params_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u@h/d?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@h/d?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));

        let (rest, mode, root) = take_tls_params("postgres://u@h/d?sslmode=require");
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgres://u@h/d", Some("require"), None)
        );

        let (rest, mode, root) =
            take_tls_params("host=h dbname=d sslmode=verify-ca sslrootcert='/ca.pem'");
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
    }

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
