//! Test certificates made at test time with rcgen: a CA, a server certificate for
//! `localhost` and 127.0.0.1 signed by it, and an unrelated CA that must not verify it; plus
//! rustls client configurations (ring provider) that trust one of them.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;

/// PEM files in a temp dir (removed on drop) and the same material in memory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
    /// Server certificate (`localhost`, IP 127.0.0.1) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub other_ca_der: CertificateDer<'static>,
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA self-signs");
    (cert, key)
}

/// Generates the CA, the other CA and the server certificate into a fresh temp dir.
pub fn generate() -> Pki {
    let (ca, ca_key) = make_ca("pgwarden test CA");
    let (other, _) = make_ca("pgwarden unrelated CA");

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("CA signs the server certificate");

    let dir = tempfile::Builder::new()
        .prefix("pgwarden-certs")
        .tempdir()
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_path = write("ca.crt", &ca.pem());
    let other_path = write("other-ca.crt", &other.pem());
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let cert_path = write("server.crt", &cert_pem);
    let key_path = write("server.key", &key_pem);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    Pki {
        ca: ca_path,
        other_ca: other_path,
        cert: cert_path,
        key: key_path,
        cert_pem,
        key_pem,
        ca_der: ca.der().clone(),
        other_ca_der: other.der().clone(),
        dir,
    }
}

/// A tokio-rustls connector trusting `root`, offering `alpn` (none when empty).
pub fn connector(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("CA certificate is accepted");
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The server name the test certificate is issued for.
pub fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}
