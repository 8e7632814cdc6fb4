//! HTTPS in the binary from PEM files, as a renewal meets it: a client connects, the files are
//! replaced (the way certbot swaps them), a new connection sees the new certificate while the
//! old connection keeps working; plain HTTP redirects; a broken renewal keeps the old
//! certificate; a broken certificate stops the start with a message naming the file.

use crate::support;

use crate::support::app::TestApp;
use crate::support::certs::{connect, connector, get, install, issue, shown};
use neulbi::config::Config;
use neulbi::startup::Application;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

#[actix_rt::test]
async fn a_renewed_certificate_serves_new_connections_while_open_ones_keep_going() {
    let files = tempfile::tempdir().expect("dir");
    let (a, b) = (issue("first"), issue("renewed"));
    install(files.path(), &a);
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
    install(files.path(), &b);
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
    // The chain of one certificate with the key of another.
    let mismatched = support::certs::Issued {
        key_pem: b.key_pem.clone(),
        ..a
    };
    install(files.path(), &mismatched);
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

/// The embedded TURN server's TLS listener (`turns:`) serves the HTTPS certificate; without a
/// certificate the node refuses to start and names the setting.
#[actix_rt::test]
async fn the_turn_tls_listener_serves_the_nodes_certificate() {
    let files = tempfile::tempdir().expect("dir");
    let issued = issue("turns");
    install(files.path(), &issued);
    let turns: std::net::SocketAddr = ([127, 0, 0, 1], support::free_port()).into();
    let turn_over_tls_only = move |c: &mut Config| {
        c.media.turn.secret = "turns-test-secret".into();
        c.media.turn.listen_udp = None;
        c.media.turn.listen_tcp = None;
        c.media.turn.listen_tls = Some(turns);
        c.media.turn.relay_ip = turns.ip();
    };

    let data = tempfile::tempdir().expect("data");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data.path().to_owned(),
        ..Config::default()
    };
    turn_over_tls_only(&mut config);
    let err = match Application::build(&config).await {
        Ok(_) => panic!("TURN over TLS without a certificate must stop the start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("NEULBI_TURN_LISTEN_TLS"), "{err}");

    let (cert, key) = (
        files.path().join("fullchain.pem"),
        files.path().join("privkey.pem"),
    );
    let app = TestApp::start(move |c| {
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
        turn_over_tls_only(c);
    })
    .await;
    let tls = support::certs::connector_with_alpn(&[&issued.ca], vec![b"stun.turn".to_vec()]);
    let stream = connect(&tls, turns).await;
    assert_eq!(shown(&stream), issued.leaf);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"stun.turn"[..]));
    drop(stream);
    app.stop().await;
}
