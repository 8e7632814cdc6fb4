//! HTTPS in the binary from PEM files, as a renewal meets it: a client connects, the files are
//! replaced (the way certbot swaps them), a new connection sees the new certificate while the
//! old connection keeps working; plain HTTP redirects; a broken renewal keeps the old
//! certificate; a broken certificate stops the start with a message naming the file.

mod support;

use neulbi::config::Config;
use neulbi::startup::Application;
use std::path::Path;
use std::time::Duration;
use support::app::TestApp;
use support::certs::{connect, connector, get, issue, shown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// Writes the files the way a renewal does: new files, then renamed over the old ones.
fn install(dir: &Path, cert: &str, key: &str) {
    for (name, text) in [("fullchain.pem", cert), ("privkey.pem", key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

#[actix_rt::test]
async fn a_renewed_certificate_serves_new_connections_while_open_ones_keep_going() {
    let files = tempfile::tempdir().expect("dir");
    let (a, b) = (issue("first"), issue("renewed"));
    install(files.path(), &a.chain_pem, &a.key_pem);
    let cert = files.path().join("fullchain.pem");
    let key = files.path().join("privkey.pem");
    let app = TestApp::start(|c| {
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
        c.tls.reload_secs = 1;
        c.tls.redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let tls = connector(&[&a.ca, &b.ca]);

    let mut first = connect(&tls, app.addr).await;
    assert_eq!(shown(&first), a.leaf);
    let (status, head) = get(&mut first, "/healthz").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );

    // Renewal: new files in place; within a few reload periods new handshakes get them.
    install(files.path(), &b.chain_pem, &b.key_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut second = loop {
        let c = connect(&tls, app.addr).await;
        if shown(&c) == b.leaf {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(get(&mut second, "/healthz").await.0, 200);
    // The connection opened before the renewal is unaffected.
    assert_eq!(get(&mut first, "/healthz").await.0, 200);
    assert_eq!(shown(&first), a.leaf);

    // A broken renewal (a half-written file) keeps the certificate in force.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let third = connect(&tls, app.addr).await;
    assert_eq!(shown(&third), b.leaf);

    // A client that trusts only the old CA now refuses the server: it really changed.
    let old_only = connector(&[&a.ca]);
    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let refused = old_only
        .connect(ServerName::IpAddress(app.addr.ip().into()), tcp)
        .await;
    assert!(refused.is_err());

    // Plain HTTP on the redirect listener goes to the HTTPS port, path and query kept.
    let redirect = app.redirect.expect("redirect listener");
    let mut plain = TcpStream::connect(redirect).await.expect("connect");
    plain
        .write_all(b"GET /rooms/x/messages?limit=5 HTTP/1.1\r\nHost: localhost:80\r\n\r\n")
        .await
        .expect("write");
    let mut response = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 308"), "{text}");
    assert!(
        text.contains(&format!(
            "location: https://localhost:{}/rooms/x/messages?limit=5",
            app.addr.port()
        )),
        "{text}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_key_that_does_not_match_the_certificate_stops_the_start() {
    let files = tempfile::tempdir().expect("dir");
    let (a, b) = (issue("first"), issue("other"));
    install(files.path(), &a.chain_pem, &b.key_pem);
    let data = tempfile::tempdir().expect("data");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data.path().to_owned(),
        tls: neulbi::edge::tls::TlsSettings {
            cert_file: Some(files.path().join("fullchain.pem")),
            key_file: Some(files.path().join("privkey.pem")),
            ..Default::default()
        },
        ..Config::default()
    };
    let err = match Application::build(&config).await {
        Ok(_) => panic!("a mismatched key must stop the start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("privkey.pem") && err.contains("does not belong"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
