//! The container image, built here the only way this machine allows (no container can run on
//! it): a Debian base made from the package mirror (`mmdebstrap`), imported into podman, and
//! the Dockerfile's copy-only runtime stage built on it from this build's binary. Then the
//! image is inspected: non-root user, health check, entry point, no secrets in its
//! configuration, the data directory owned by that user, and nothing in it but the binary,
//! CA roots and the data directory on top of the base.

use std::path::Path;
use std::process::{Command, Output};

fn run(what: &str, command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (bash .ci/run installs mmdebstrap and podman)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes the test's images however the test ends.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("podman").args(["rmi", "-f", image]).output();
        }
    }
}

#[test]
fn the_runtime_stage_builds_on_a_debian_base_and_is_what_it_claims() {
    let work = tempfile::tempdir().expect("dir");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (base, image) = (
        format!("localhost/neulbi-test-base:{tag}"),
        format!("localhost/neulbi-test:{tag}"),
    );
    let images = Images(vec![image.clone(), base.clone()]);

    let rootfs = work.path().join("rootfs.tar");
    run(
        "mmdebstrap",
        Command::new("mmdebstrap")
            .args(["--variant=essential", "--quiet", "bookworm"])
            .arg(&rootfs),
    );
    run(
        "podman import",
        Command::new("podman").arg("import").arg(&rootfs).arg(&base),
    );

    // The build context the prebuilt path takes: binary, CA roots, an empty data directory.
    let dist = work.path().join("dist");
    std::fs::create_dir_all(dist.join("data")).expect("dist");
    std::fs::copy(env!("CARGO_BIN_EXE_neulbi"), dist.join("neulbi")).expect("binary");
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        dist.join("ca-certificates.crt"),
    )
    .expect("CA roots (Debian ca-certificates)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run(
        "podman build",
        Command::new("podman")
            .current_dir(root)
            .args(["build", "--format", "docker", "-f", "docker/Dockerfile"])
            .args(["--build-arg", &format!("BASE={base}")])
            .args(["--build-arg", "BINARY_FROM=prebuilt"])
            .arg("--build-context")
            .arg(format!("dist={}", dist.display()))
            .args(["--target", "runtime", "-t", &image, "."]),
    );

    let inspect = |name: &str| -> serde_json::Value {
        let out = run(
            "podman image inspect",
            Command::new("podman").args(["image", "inspect", name]),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("inspect json")[0].clone()
    };
    let built = inspect(&image);
    let config = &built["Config"];
    let user = config["User"].as_str().expect("a user");
    assert_eq!(user, "10001:10001", "runs as a dedicated non-root user");
    assert_eq!(
        built["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/neulbi", "healthcheck"])
    );
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/neulbi"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"NEULBI_DATA_DIR=/var/lib/neulbi"), "{env:?}");
    for e in &env {
        let upper = e.to_ascii_uppercase();
        for secret in ["PASSWORD", "SECRET", "KEK", "TOKEN", "PRIVATE"] {
            assert!(!upper.contains(secret), "a secret in the image: {e}");
        }
    }
    // Nothing but the binary, the CA roots and the data directory on top of the base.
    let base_size = inspect(&base)["Size"].as_u64().expect("size");
    let size = built["Size"].as_u64().expect("size");
    let binary = std::fs::metadata(dist.join("neulbi"))
        .expect("binary")
        .len();
    assert!(
        size <= base_size + binary + 2 * 1024 * 1024,
        "image {size} B = base {base_size} B + binary {binary} B + more than 2 MB"
    );
    // The data directory belongs to the runtime user (the image's files, without running it).
    let created = run(
        "podman create",
        Command::new("podman").args(["create", &image]),
    );
    let container = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("podman export {container} | tar -tvf -"))
        .output()
        .expect("export");
    let _ = Command::new("podman")
        .args(["rm", "-f", &container])
        .output();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let data = listing
        .lines()
        .find(|l| l.ends_with(" var/lib/neulbi/"))
        .unwrap_or_else(|| panic!("no data directory in the image"));
    assert!(data.contains("10001/10001"), "{data}");
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(" usr/local/bin/neulbi") && l.starts_with("-rwx")),
        "the binary is executable"
    );
    drop(images);
}
