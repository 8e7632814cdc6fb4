//! The deployment files as far as this machine can check them (it cannot run containers):
//! `docker-compose config` (Debian `docker-compose`) validates the compose file with every
//! profile and refuses to start without the secrets; the Dockerfile's runtime stage is
//! inspected; `neulbi healthcheck` answers for a running node and fails clearly otherwise.

use crate::support;

use crate::support::binary::{neulbi, serve, sigterm};
use std::path::{Path, PathBuf};
use std::process::Command;

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

const PROFILES: [&str; 6] = ["front", "s3", "otel", "monitoring", "turn", "kurrentdb"];

/// `docker-compose config` with `env` as the env file; success and combined output.
fn compose_config(env: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("dir");
    let env_file = dir.path().join("test.env");
    std::fs::write(&env_file, env).expect("env file");
    let mut c = Command::new("docker-compose");
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("--env-file")
        .arg(&env_file)
        .arg("-f")
        .arg(docker_dir().join("compose.yaml"));
    for p in PROFILES {
        c.args(["--profile", p]);
    }
    let out = c
        .arg("config")
        .args(extra)
        .output()
        .expect("`docker-compose` not found: install the Debian package (.ci/run does)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const ENV: &str = "NEULBI_DOMAIN=neulbi.example.org\nNEULBI_PUBLIC_URL=https://neulbi.example.org\n\
POSTGRES_PASSWORD=compose-test-password\nNEULBI_KEK_BASE64=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n";

#[test]
fn the_compose_file_is_valid_with_every_profile_and_demands_its_secrets() {
    let (ok, out) = compose_config(ENV, &["--services"]);
    assert!(ok, "{out}");
    for service in [
        "neulbi",
        "postgres",
        "nginx",
        "minio",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
        "coturn",
        "kurrentdb",
    ] {
        assert!(out.lines().any(|l| l.trim() == service), "{service}: {out}");
    }
    let (ok, rendered) = compose_config(ENV, &[]);
    assert!(ok, "{rendered}");
    // The node gets its database, public URL, metrics listener and trusted proxy.
    for expected in [
        "NEULBI_DATABASE_URL: postgres://neulbi:compose-test-password@postgres:5432/neulbi",
        "NEULBI_PUBLIC_URL: https://neulbi.example.org",
        "NEULBI_METRICS_LISTEN: 0.0.0.0:9464",
        "NEULBI_TRUSTED_PROXIES: 172.28.0.10",
        "ipv4_address: 172.28.0.10",
        "NEULBI_KEK: env:NEULBI_KEK_BASE64",
        "/etc/letsencrypt/live/neulbi.example.org/fullchain.pem",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected} not in:\n{rendered}"
        );
    }
    // Nothing but the proxy and media is published on every interface.
    for line in rendered.lines().map(str::trim) {
        if let Some(port) = line.strip_prefix("- ").filter(|l| {
            l.chars().next().is_some_and(|c| c.is_ascii_digit())
                && l.contains(':')
                && l.contains('/')
        }) {
            let public = !port.starts_with("127.0.0.1:");
            let allowed = [
                "80:80/tcp",
                "443:443/tcp",
                "40000:40000/udp",
                "3478:3478/udp",
            ];
            assert!(
                !public || allowed.contains(&port),
                "published to the world: {port}"
            );
        }
    }
    // Without the secrets, compose refuses and names what is missing.
    let (ok, out) = compose_config("NEULBI_DOMAIN=x\n", &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("POSTGRES_PASSWORD") || out.contains("NEULBI_PUBLIC_URL"),
        "{out}"
    );
}

#[test]
fn the_runtime_image_runs_as_a_user_checks_health_and_holds_no_secrets() {
    let dockerfile = std::fs::read_to_string(docker_dir().join("Dockerfile")).expect("Dockerfile");
    let runtime = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS runtime"))
        .expect("a runtime stage");
    let directives: Vec<&str> = runtime
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Only copies and metadata: it builds where nothing can run.
    assert!(
        !directives.iter().any(|l| l.starts_with("RUN ")),
        "{runtime}"
    );
    let user = directives
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    assert!(runtime.contains("HEALTHCHECK"), "{runtime}");
    assert!(
        runtime.contains("/usr/local/bin/neulbi\", \"healthcheck\"]"),
        "{runtime}"
    );
    assert!(
        runtime.contains("ENTRYPOINT [\"/usr/local/bin/neulbi\"]"),
        "{runtime}"
    );
    let instructions = directives.join("\n").to_ascii_uppercase();
    for secret in ["PASSWORD", "SECRET", "NEULBI_KEK", "TOKEN", "PRIVATE"] {
        assert!(
            !instructions.contains(secret),
            "{secret} in the runtime stage: {runtime}"
        );
    }
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    for path in ["target/", ".git/", "*.env"] {
        assert!(
            ignore.lines().any(|l| l.trim() == path),
            "{path} not ignored"
        );
    }
}

#[tokio::test]
async fn healthcheck_passes_for_a_ready_node_and_fails_clearly_otherwise() {
    let dir = tempfile::tempdir().expect("dir");
    let (child, addr) = serve(dir.path(), &[]).await;
    support::http::wait_ready(addr).await;
    let out = neulbi(dir.path())
        .args(["healthcheck"])
        .env("NEULBI_LISTEN", addr.to_string())
        .output()
        .expect("healthcheck");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = child;
    sigterm(&child);
    assert!(child.wait().expect("wait").success());
    let out = neulbi(dir.path())
        .args(["healthcheck"])
        .env("NEULBI_LISTEN", addr.to_string())
        .output()
        .expect("healthcheck");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr.to_string()), "{err}");
    // With TLS on the main listener the probe needs the plain metrics listener.
    let out = neulbi(dir.path())
        .args(["healthcheck"])
        .env("NEULBI_TLS_CERT", "/nonexistent/fullchain.pem")
        .env("NEULBI_TLS_KEY", "/nonexistent/privkey.pem")
        .output()
        .expect("healthcheck");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NEULBI_METRICS_LISTEN"));
}
