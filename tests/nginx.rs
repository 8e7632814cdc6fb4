//! Neulbi behind the nginx configuration it ships (`docker/nginx/templates/`), rendered the
//! way the nginx image renders it and run by a real nginx (Debian `nginx`) with a certificate
//! made by the test: plain HTTP redirects, the web client loads over HTTPS, STOMP over
//! WebSocket and over SockJS xhr-streaming work through the proxy, and an OAuth redirect URI
//! carries the public host.

use crate::support;

use crate::support::app::TestApp;
use crate::support::certs::{connect, connector, get, issue};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// An nginx the test owns; stopped (and reaped) on drop, even when the test panics.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped template with the image's variables filled in.
fn render(vars: &[(&str, String)]) -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/nginx/templates/neulbi.conf.template");
    let mut text = std::fs::read_to_string(&path).expect("the nginx template");
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    let leftover: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("${"))
        .collect();
    assert!(
        leftover.is_empty(),
        "unfilled template variables: {leftover:?}"
    );
    text
}

async fn start_nginx(dir: &Path, site: &str, https: u16) -> Nginx {
    std::fs::write(dir.join("neulbi.conf"), site).expect("site");
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         include {d}/neulbi.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("main config");
    // As root, nginx's workers would drop to `nobody`, who cannot write the test's temp dir.
    let run_as_root = if running_as_root() {
        "user root; daemon off;"
    } else {
        "daemon off;"
    };
    let child = Command::new("nginx")
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(run_as_root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("`nginx` not found: install the Debian package `nginx` (.ci/run does)");
    let nginx = Nginx {
        child,
        dir: dir.to_owned(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", https))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nginx
}

/// Whether this process runs as root.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[actix_rt::test]
async fn behind_the_shipped_nginx_config_chat_and_sign_in_work_over_https() {
    let (http, https) = (support::free_port(), support::free_port());
    let public = format!("https://localhost:{https}");
    let app = TestApp::start(|c| {
        c.public_url = Some(public.clone());
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
        c.auth.apply_env(&|k: &str| match k {
            "NEULBI_AUTH_GOOGLE_CLIENT_ID" => Some("google-client".to_owned()),
            "NEULBI_AUTH_GOOGLE_CLIENT_SECRET" => Some("google-secret".to_owned()),
            _ => None,
        });
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let cert = issue("nginx");
    std::fs::write(dir.path().join("fullchain.pem"), &cert.chain_pem).expect("cert");
    std::fs::write(dir.path().join("privkey.pem"), &cert.key_pem).expect("key");
    let site = render(&[
        ("NEULBI_DOMAIN", "localhost".to_owned()),
        ("NEULBI_UPSTREAM", app.addr.to_string()),
        ("NGINX_HTTP_PORT", format!("127.0.0.1:{http}")),
        ("NGINX_HTTPS_PORT", format!("127.0.0.1:{https}")),
        (
            "TLS_CERT",
            dir.path().join("fullchain.pem").display().to_string(),
        ),
        (
            "TLS_KEY",
            dir.path().join("privkey.pem").display().to_string(),
        ),
    ]);
    let _nginx = start_nginx(dir.path(), &site, https).await;
    let front: SocketAddr = format!("127.0.0.1:{https}").parse().expect("addr");
    let tls = connector(&[&cert.ca]);

    // Plain HTTP: a permanent redirect to HTTPS, path and query kept.
    let plain = support::http::request(
        format!("127.0.0.1:{http}").parse().expect("addr"),
        "GET",
        "/counselors?q=kim",
        &[],
        "",
    )
    .await;
    assert_eq!(plain.status, 308, "{}", plain.headers);
    assert!(
        plain
            .headers
            .to_ascii_lowercase()
            .contains("location: https://127.0.0.1/counselors?q=kim"),
        "{}",
        plain.headers
    );

    // The web client over HTTPS, with HSTS.
    let mut page = connect(&tls, front).await;
    let (status, head) = get(&mut page, "/").await;
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("strict-transport-security"), "{head}");

    // Sign-in through the proxy; the OAuth redirect URI names the public host, not the
    // upstream address nginx connects to.
    let client = app.client("behind.nginx@example.com").await;
    let mut oauth = connect(&tls, front).await;
    let (status, head) = get(&mut oauth, "/oauth2/authorization/google").await;
    assert_eq!(status, 302, "{head}");
    let redirect_uri = format!(
        "redirect_uri={}",
        form_urlencoded::byte_serialize(format!("{public}/login/oauth2/code/google").as_bytes())
            .collect::<String>()
    );
    assert!(head.contains(&redirect_uri), "{redirect_uri} not in {head}");
    assert!(!head.contains(&app.addr.to_string()), "{head}");

    // STOMP over WebSocket through the proxy.
    let stream = connect(&tls, front).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{https}/chat/websocket"), stream)
            .await
            .expect("WebSocket upgrade through nginx");
    ws.send(Message::text(format!(
        "CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
        client.token
    )))
    .await
    .expect("send CONNECT");
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("a message");
    let text = answer.into_text().expect("text").to_string();
    assert!(text.starts_with("CONNECTED"), "{text}");
    ws.send(Message::text("DISCONNECT\nreceipt:bye\n\n\0"))
        .await
        .expect("send DISCONNECT");
    let bye = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("a message");
    assert!(bye.into_text().expect("text").starts_with("RECEIPT"));

    // SockJS xhr-streaming through the proxy: the stream is not buffered, so the open frame
    // and then the CONNECTED frame arrive while the response is still open.
    let mut streaming = connect(&tls, front).await;
    streaming
        .write_all(
            b"POST /chat/000/nginxsession/xhr_streaming HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .expect("open the stream");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    let read_until = |needle: &'static str| {
        let needle = needle.to_owned();
        move |seen: &Vec<u8>| String::from_utf8_lossy(seen).contains(&needle)
    };
    let opened = read_until("\no\n");
    while !opened(&seen) {
        let n = tokio::time::timeout(Duration::from_secs(10), streaming.read(&mut chunk))
            .await
            .expect("the open frame arrives unbuffered")
            .expect("read");
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::to_string(&[format!(
        "CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
        client.token
    )])
    .expect("json");
    let mut sender = connect(&tls, front).await;
    sender
        .write_all(
            format!(
                "POST /chat/000/nginxsession/xhr_send HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("xhr_send");
    let mut sent = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), sender.read(&mut sent))
        .await
        .expect("xhr_send answered")
        .expect("read");
    let sent = String::from_utf8_lossy(&sent[..n]);
    assert!(sent.starts_with("HTTP/1.1 204"), "{sent}");
    let connected = read_until("CONNECTED");
    while !connected(&seen) {
        let n = tokio::time::timeout(Duration::from_secs(10), streaming.read(&mut chunk))
            .await
            .expect("CONNECTED arrives through the open stream")
            .expect("read");
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    app.stop().await;
}
