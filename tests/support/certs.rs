//! Certificates made per test (a CA and a leaf for 127.0.0.1 / localhost it signed), and a TLS
//! client that trusts exactly the CAs a test names and reports the certificate it was shown.

use rcgen::{CertificateParams, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A CA and a leaf for 127.0.0.1 it signed: the leaf's chain and key as PEM, the CA as DER.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub leaf: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
}

pub fn issue(name: &str) -> Issued {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("leaf key");
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("leaf");
    let leaf = params.signed_by(&key, &issuer).expect("leaf cert");
    Issued {
        chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
        leaf: leaf.der().clone(),
        ca: ca.der().clone(),
    }
}

/// Writes the chain and key the way a renewal does (certbot's `fullchain.pem` and
/// `privkey.pem`): new files, then renamed over the old ones.
pub fn install(dir: &std::path::Path, issued: &Issued) {
    for (name, text) in [
        ("fullchain.pem", &issued.chain_pem),
        ("privkey.pem", &issued.key_pem),
    ] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

pub fn connector(trusted: &[&CertificateDer<'static>]) -> TlsConnector {
    connector_with_alpn(trusted, Vec::new())
}

/// A client that trusts `trusted` and offers the ALPN protocols `alpn`.
pub fn connector_with_alpn(
    trusted: &[&CertificateDer<'static>],
    alpn: Vec<Vec<u8>>,
) -> TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for ca in trusted {
        roots.add((*ca).clone()).expect("trust anchor");
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn;
    TlsConnector::from(Arc::new(config))
}

pub async fn connect(tls: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

pub fn shown(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .clone()
        .into_owned()
}

/// One keep-alive request on an open connection: status line and headers, body by length.
pub async fn get<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    path: &str,
) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("status");
                    return (status, head.to_owned());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("response in time")
}
