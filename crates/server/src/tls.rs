//! TLS for client connections (rustls, with the ring provider): the server configuration made
//! from PEM files, and swapped for a new one without a restart.
//!
//! The settings are Redis's: `tls-port`, `tls-cert-file`, `tls-key-file`, `tls-ca-cert-file`
//! and `tls-auth-clients` (`yes`: a client must present a certificate signed by the CA; `optional`:
//! one it presents must be; `no`: none is asked for). Each connection takes the configuration
//! current when it arrives, so `CONFIG SET tls-cert-file ...` (or the same value again, after
//! the file was replaced) serves new connections with the new certificate while open ones go on.

use parking_lot::Mutex;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether and how clients prove who they are (`tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthClients {
    #[default]
    Yes,
    Optional,
    No,
}

impl AuthClients {
    pub fn parse(v: &str) -> Option<AuthClients> {
        match v.to_ascii_lowercase().as_str() {
            "yes" => Some(AuthClients::Yes),
            "optional" => Some(AuthClients::Optional),
            "no" => Some(AuthClients::No),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthClients::Yes => "yes",
            AuthClients::Optional => "optional",
            AuthClients::No => "no",
        }
    }
}

/// The files a TLS configuration is made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub auth_clients: AuthClients,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// A rustls server configuration from `files`, or why it cannot be made.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (files.auth_clients, &files.ca) {
        (AuthClients::No, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(
                "tls-auth-clients yes or optional needs tls-ca-cert-file (or set it to no)".into(),
            )
        }
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == AuthClients::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", files.cert.display()))
}

/// The cluster bus's mutual TLS from the node's files (`tls-cluster yes`): a node accepts
/// peers, and connects to peers, only with certificates signed by the CA of
/// `tls-ca-cert-file`, presenting its own `tls-cert-file` both ways.
pub fn bus_tls(files: &TlsFiles) -> Result<cairn_replication::bus::BusTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = files
        .ca
        .as_ref()
        .ok_or("tls-cluster needs tls-ca-cert-file (the cluster CA)")?;
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    // Nothing may travel from the accepting end (see `cairn_replication::bus`).
    server.send_tls13_tickets = 0;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(cairn_replication::bus::BusTls::new(
        Arc::new(server),
        Arc::new(client),
    ))
}

/// The configuration new TLS connections get.
pub struct Tls {
    current: Mutex<Arc<ServerConfig>>,
}

impl Tls {
    pub fn new(files: TlsFiles) -> Result<Tls, String> {
        Ok(Tls {
            current: Mutex::new(server_config(&files)?),
        })
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.lock().clone())
    }

    /// Makes a configuration from `files` (read now) and serves new connections with it; on
    /// an error the one in use stays.
    pub fn reload(&self, files: TlsFiles) -> Result<(), String> {
        *self.current.lock() = server_config(&files)?;
        Ok(())
    }
}

/// Development certificates (`cairn certs`): a CA, a node certificate for `hosts` (for serving
/// clients and, with mutual TLS, for nodes to present to each other), and a client
/// certificate, each as `<name>.crt` and `<name>.key` PEM files in `dir`. Returns the paths
/// written. Not for production: the CA key sits beside the certificates.
pub fn write_dev_certs(dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cairn development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let mut written = Vec::new();
    let mut write = |name: &str, cert: String, key: String| -> Result<(), String> {
        for (ext, text) in [("crt", cert), ("key", key)] {
            let path = dir.join(format!("{name}.{ext}"));
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            #[cfg(unix)]
            if ext == "key" {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            written.push(path);
        }
        Ok(())
    };
    write("ca", ca.pem(), ca_key.serialize_pem())?;
    let leaf = |cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut params = CertificateParams::new(sans).map_err(e)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(e)?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(e)?;
        Ok::<_, String>((cert.pem(), key.serialize_pem()))
    };
    let (cert, key) = leaf(
        "cairn node",
        hosts.to_vec(),
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    write("node", cert, key)?;
    let (cert, key) = leaf(
        "cairn client",
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write("client", cert, key)?;
    Ok(written)
}

/// The first byte of a TLS handshake record: how the client port tells a node's TLS
/// connection from a client's RESP (which starts with a type byte or an inline command).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
