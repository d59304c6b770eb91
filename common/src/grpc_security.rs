//! gRPC security shared by both binaries: TLS with rustls for what a process serves (optionally requiring
//! client certificates) and for the applier's connection to the reader, and the bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::config::Secret;

/// What a process serves its gRPC with (the reader's journal, the applier's admin service).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeSecurityArgs {
    /// PEM certificate (chain) to serve gRPC over TLS with; TLS is on when this and --tls-key are set
    #[arg(long, env = "REPLICA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "REPLICA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require gRPC clients to present a certificate signed by this PEM CA (mutual TLS)
    #[arg(long, env = "REPLICA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer token required on every journal and admin call (`authorization: Bearer ...`), and sent by the applier
    #[arg(long, env = "REPLICA_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<Secret>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl ServeSecurityArgs {
    /// Checks the combination at start: both or neither of certificate and key, a client CA only with TLS.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err("REPLICA_TLS_CERT and REPLICA_TLS_KEY go together: set both to serve TLS".into())
            }
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("REPLICA_TLS_CLIENT_CA needs TLS: set REPLICA_TLS_CERT and REPLICA_TLS_KEY too".into());
        }
        if self.auth_token.as_ref().is_some_and(|t| t.expose().is_empty() || !t.expose().is_ascii()) {
            return Err("REPLICA_AUTH_TOKEN must be non-empty ASCII".into());
        }
        Ok(())
    }

    /// The server's TLS settings, if TLS is on (files are read here, at start).
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(Some(tls))
    }

    pub fn require_token(&self) -> RequireToken {
        RequireToken(self.auth_token.as_ref().map(|t| Arc::from(t.expose())))
    }
}

/// How the applier reaches the reader over TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct ReaderTlsArgs {
    /// PEM CA that signed the reader's certificate; TLS to the reader is on when set (or the URL is https://)
    #[arg(long, env = "REPLICA_READER_CA")]
    pub reader_ca: Option<PathBuf>,
    /// PEM client certificate presented to the reader (mutual TLS)
    #[arg(long, env = "REPLICA_READER_CLIENT_CERT")]
    pub reader_client_cert: Option<PathBuf>,
    /// PEM private key of --reader-client-cert
    #[arg(long, env = "REPLICA_READER_CLIENT_KEY")]
    pub reader_client_key: Option<PathBuf>,
    /// Name to verify the reader's certificate against (default: the URL's host)
    #[arg(long, env = "REPLICA_READER_TLS_DOMAIN")]
    pub reader_tls_domain: Option<String>,
}

impl ReaderTlsArgs {
    pub fn validate(&self, url: &str) -> Result<(), String> {
        if url.starts_with("https://") && self.reader_ca.is_none() {
            return Err(
                "an https:// reader URL needs REPLICA_READER_CA (the CA that signed the reader's certificate)".into()
            );
        }
        match (&self.reader_client_cert, &self.reader_client_key) {
            (Some(_), None) | (None, Some(_)) => {
                Err("REPLICA_READER_CLIENT_CERT and REPLICA_READER_CLIENT_KEY go together".into())
            }
            _ => Ok(()),
        }
    }

    /// The client's TLS settings, if TLS to the reader is on.
    pub fn client_tls(&self) -> Result<Option<ClientTlsConfig>, String> {
        let Some(ca) = &self.reader_ca else { return Ok(None) };
        let identity = self.reader_client_cert.as_deref().zip(self.reader_client_key.as_deref());
        client_tls(ca, identity, self.reader_tls_domain.as_deref()).map(Some)
    }
}

/// A TLS client's settings: the CA that signed the server's certificate, the client's own certificate and key
/// (mutual TLS) and the name to verify the server's certificate against (default: the host connected to).
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
    }
    if let Some(domain) = domain {
        tls = tls.domain_name(domain.to_owned());
    }
    Ok(tls)
}

/// Server side: refuses a call without the expected bearer token (no token configured: everything passes).
#[derive(Clone)]
pub struct RequireToken(Option<Arc<str>>);

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RequireToken {
    /// The refusal, for gRPC and HTTP alike.
    pub const REFUSAL: &'static str =
        "missing or wrong bearer token: send the header `authorization: Bearer <REPLICA_AUTH_TOKEN>`";

    /// Whether an `authorization` header value passes (always, when no token is configured).
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.0 else { return true };
        authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| same(token.as_bytes(), expected.as_bytes()))
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if self.accepts(given) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(Self::REFUSAL))
        }
    }
}

/// Client side: adds the bearer token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&Secret>) -> Result<Self, String> {
        token
            .map(|t| {
                format!("Bearer {}", t.expose())
                    .parse()
                    .map_err(|_| "REPLICA_AUTH_TOKEN is not a valid header value".to_owned())
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn only_the_right_bearer_token_passes() {
        let mut check = RequireToken(Some(Arc::from("s3cret")));
        let mut with = |header: Option<&str>| {
            let mut req = Request::new(());
            if let Some(h) = header {
                req.metadata_mut().insert("authorization", h.parse().expect("header"));
            }
            check.call(req).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(with(Some("Bearer s3cret")), Ok(()));
        assert_eq!(with(Some("Bearer s3cre")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(Some("s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(None), Err(tonic::Code::Unauthenticated));
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }
}

/// How a TLS connection failed, as far as a person can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server requires a client certificate and none was sent.
    ClientCertRequired,
    /// The server refused the client certificate sent.
    ClientCertRefused,
    /// The server's certificate is not signed by the CA given.
    UnknownIssuer,
    /// The server's certificate does not name the host connected to.
    WrongName,
    /// The server's certificate has expired or is not valid yet.
    Expired,
}

/// The settings a TLS client of ours is configured by, as its hints name them.
#[derive(Debug, Clone, Copy)]
pub struct ClientTlsNames {
    /// Where the CA of the server's certificate is set.
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
    pub domain: &'static str,
    /// Where the server is told which client certificates to trust.
    pub server_client_ca: &'static str,
}

/// The applier's connection to the reader (and, for an unknown CA, MariaDB connections).
pub const READER_CLIENT: ClientTlsNames = ClientTlsNames {
    ca: "REPLICA_READER_CA for the reader, MARIA_TLS_CA for MariaDB",
    cert: "REPLICA_READER_CLIENT_CERT",
    key: "REPLICA_READER_CLIENT_KEY",
    domain: "REPLICA_READER_TLS_DOMAIN",
    server_client_ca: "the reader's REPLICA_TLS_CLIENT_CA",
};

impl TlsFailure {
    /// What happened and what to set, in plain words.
    pub fn hint(self, names: &ClientTlsNames) -> String {
        match self {
            Self::ClientCertRequired => {
                format!("the server requires a client certificate: set {} and {}", names.cert, names.key)
            }
            Self::ClientCertRefused => format!(
                "the server refused this client certificate: it must be signed by the CA the server trusts ({})",
                names.server_client_ca
            ),
            Self::UnknownIssuer => format!("the server's certificate is not signed by the CA given ({})", names.ca),
            Self::WrongName => format!(
                "the server's certificate does not name the host connected to: connect by a name it holds, or set {} \
                 to one",
                names.domain
            ),
            Self::Expired => {
                "the server's certificate has expired or is not valid yet (check it, and the clocks)".into()
            }
        }
    }
}

/// The TLS failure somewhere in an error's chain (None if there is none).
/// rustls errors reach us inside `std::io::Error`s, either as the error itself (MariaDB connections) or, through
/// tonic's connector, only as its text; both are recognised (the text by rustls's own wording, pinned by a test).
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    let mut current = Some(e);
    while let Some(err) = current {
        let tls = err.downcast_ref::<Tls>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Tls>())
        });
        let text = tls.map_or_else(|| err.to_string(), ToString::to_string);
        let failure = match tls {
            Some(Tls::AlertReceived(Alert::CertificateRequired)) => Some(TlsFailure::ClientCertRequired),
            Some(Tls::AlertReceived(Alert::UnknownCA | Alert::BadCertificate | Alert::CertificateUnknown)) => {
                Some(TlsFailure::ClientCertRefused)
            }
            Some(Tls::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature)) => Some(TlsFailure::UnknownIssuer),
            Some(Tls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. })) => {
                Some(TlsFailure::WrongName)
            }
            Some(Tls::InvalidCertificate(
                Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet | Cert::NotValidYetContext { .. },
            )) => Some(TlsFailure::Expired),
            Some(_) => None,
            None if err.downcast_ref::<std::io::Error>().is_some() => failure_from_text(&text),
            None => None,
        };
        if failure.is_some() {
            return failure;
        }
        current = err.source();
    }
    None
}

/// The TLS failure in an error's chain in plain words, naming the applier's settings for the reader.
pub fn tls_hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    tls_failure(e).map(|f| f.hint(&READER_CLIENT))
}

/// rustls's wording of the same failures (`received fatal alert: …`, `invalid peer certificate: …`).
fn failure_from_text(text: &str) -> Option<TlsFailure> {
    let alert = text.strip_prefix("received fatal alert: ");
    let cert = text.strip_prefix("invalid peer certificate: ");
    match (alert, cert) {
        (Some(a), _) if a.starts_with("CertificateRequired") => Some(TlsFailure::ClientCertRequired),
        (Some(a), _) if ["UnknownCA", "BadCertificate", "CertificateUnknown"].iter().any(|k| a.starts_with(k)) => {
            Some(TlsFailure::ClientCertRefused)
        }
        (_, Some(c)) if c.starts_with("UnknownIssuer") || c.starts_with("BadSignature") => {
            Some(TlsFailure::UnknownIssuer)
        }
        (_, Some(c)) if c.contains("NotValidForName") || c.contains("not valid for name") => {
            Some(TlsFailure::WrongName)
        }
        (_, Some(c)) if c.starts_with("Expired") || c.starts_with("NotValidYet") || c.contains("expired") => {
            Some(TlsFailure::Expired)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tls_hint_tests {
    use super::tls_hint;

    #[test]
    fn a_rustls_failure_inside_an_io_error_gets_a_plain_hint() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert!(tls_hint(&io).is_some_and(|h| h.contains("requires a client certificate")));
        let plain = std::io::Error::other("nothing to do with TLS");
        assert_eq!(tls_hint(&plain), None);
        // As tonic's connector passes them on: rustls's own text only.
        for (error, says) in [
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                "requires a client certificate",
            ),
            (rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), "not signed by the CA given"),
            (rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName), "does not name the host"),
            (rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA), "refused this client certificate"),
        ] {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string());
            assert!(tls_hint(&io).is_some_and(|h| h.contains(says)), "{error}");
        }
    }
}
