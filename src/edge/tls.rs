//! TLS in the binary, from the PEM files a CA issues (Let's Encrypt's `fullchain.pem` and
//! `privkey.pem` as they are, no PKCS#12 conversion), reloaded when they change so a renewal
//! needs no restart. Each new handshake takes the certificate in force; connections already
//! open keep theirs. A plain-HTTP listener can redirect to HTTPS, and HTTPS answers carry HSTS.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// The `[tls]` section. TLS is on when both files are named.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, leaf first (`NEULBI_TLS_CERT`), e.g.
    /// `/etc/letsencrypt/live/example.org/fullchain.pem`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (`NEULBI_TLS_KEY`), e.g. `.../privkey.pem` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// A plain-HTTP address that redirects every request to HTTPS
    /// (`NEULBI_TLS_REDIRECT_LISTEN`, e.g. `0.0.0.0:80`); none when unset.
    pub redirect_listen: Option<SocketAddr>,
    /// `Strict-Transport-Security` max-age in seconds (`NEULBI_TLS_HSTS_MAX_AGE`); 0 sends none.
    pub hsts_max_age_secs: u64,
    /// How often the files are checked for a renewal (`NEULBI_TLS_RELOAD_SECS`).
    pub reload_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            redirect_listen: None,
            hsts_max_age_secs: 31_536_000,
            reload_secs: 30,
        }
    }
}

impl TlsSettings {
    /// True when HTTPS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Reads `NEULBI_TLS_*`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("NEULBI_TLS_CERT").filter(|v| !v.trim().is_empty()) {
            self.cert_file = Some(PathBuf::from(v.trim()));
        }
        if let Some(v) = get("NEULBI_TLS_KEY").filter(|v| !v.trim().is_empty()) {
            self.key_file = Some(PathBuf::from(v.trim()));
        }
        if let Some(v) = get("NEULBI_TLS_REDIRECT_LISTEN").filter(|v| !v.trim().is_empty()) {
            self.redirect_listen = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("NEULBI_TLS_REDIRECT_LISTEN: {v:?} is not HOST:PORT"))?,
            );
        }
        if let Some(v) = get("NEULBI_TLS_HSTS_MAX_AGE") {
            self.hsts_max_age_secs = crate::env_value::env_num("NEULBI_TLS_HSTS_MAX_AGE", &v)?;
        }
        if let Some(v) = get("NEULBI_TLS_RELOAD_SECS") {
            self.reload_secs =
                crate::env_value::env_num::<u64>("NEULBI_TLS_RELOAD_SECS", &v)?.max(1);
        }
        self.check()
    }

    /// Both files or neither; a redirect only in front of HTTPS.
    pub fn check(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err("tls.cert_file (NEULBI_TLS_CERT) is set without tls.key_file (NEULBI_TLS_KEY)".into()),
            (None, Some(_)) => Err("tls.key_file (NEULBI_TLS_KEY) is set without tls.cert_file (NEULBI_TLS_CERT)".into()),
            (None, None) if self.redirect_listen.is_some() => Err(
                "tls.redirect_listen (NEULBI_TLS_REDIRECT_LISTEN) needs a certificate (NEULBI_TLS_CERT, NEULBI_TLS_KEY)".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The `Strict-Transport-Security` value, if any.
    pub fn hsts(&self) -> Option<String> {
        (self.hsts_max_age_secs > 0).then(|| format!("max-age={}", self.hsts_max_age_secs))
    }
}

/// Why a certificate could not be loaded. Names the file; never prints key material.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key does not belong to the certificate, or rustls refused it.
    #[error("{0}")]
    Key(String),
}

/// When a file last changed, as far as a renewal is concerned (symlinks followed).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The crypto provider every TLS piece of the node uses (ring: the tree has both ring and
/// aws-lc-rs enabled, so rustls cannot pick one by itself).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a chain and its key, checking they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            what: format!("not a PEM certificate chain ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_owned(),
            what: "no CERTIFICATE in it".into(),
        });
    }
    let secret = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: format!("no private key in it ({e})"),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(secret)
        .map_err(|e| TlsError::Key(format!("{}: unusable private key: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::Key(format!(
            "{} does not belong to the certificate in {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(certified)
}

/// Hands every handshake the certificate in force, and swaps in a renewed one.
#[derive(Debug)]
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Stamp, Stamp)>,
}

impl CertReloader {
    /// Loads the files now: a node with a broken certificate refuses to start.
    pub fn open(settings: &TlsSettings) -> Result<Arc<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
            return Err(TlsError::Key("TLS is not configured".into()));
        };
        let (cs, ks) = (stamp(cert), stamp(key));
        let loaded = load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.clone(),
            key: key.clone(),
            current: RwLock::new((Arc::new(loaded), cs, ks)),
        }))
    }

    /// Reloads if either file changed since the last load. A renewal caught half-written, or
    /// a broken one, keeps the certificate in force (and says why); returns whether it swapped.
    pub fn reload_if_changed(&self) -> bool {
        let (cs, ks) = (stamp(&self.cert), stamp(&self.key));
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.1 == cs && current.2 == ks {
                return false;
            }
        }
        match load(&self.cert, &self.key) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (Arc::new(loaded), cs, ks);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the one in force");
                false
            }
        }
    }

    /// The rustls configuration serving through this reloader (HTTP/1.1: WebSockets need it).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Key(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Checks the files every `every` until the reloader is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(reloader) = weak.upgrade() else {
                    return;
                };
                // File reads are small; off the worker anyway.
                let _ = tokio::task::spawn_blocking(move || reloader.reload_if_changed()).await;
            }
        });
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// Where a plain-HTTP request is sent: the public URL's origin if configured, else the same
/// host on the HTTPS port (no port when it is 443).
pub fn redirect_target(
    public_url: Option<&str>,
    host: Option<&str>,
    https_port: u16,
    path_and_query: &str,
) -> Option<String> {
    if let Some(base) = public_url {
        return Some(format!("{}{path_and_query}", base.trim_end_matches('/')));
    }
    let host = host?;
    // The Host header without its port; an IPv6 literal keeps its brackets.
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !valid {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    Some(format!("https://{name}{port}{path_and_query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_need_both_files_and_a_certificate_for_the_redirect() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let mut s = TlsSettings::default();
        assert!(!s.enabled());
        let err = s
            .apply_env(&env(&[("NEULBI_TLS_CERT", "/c.pem")]))
            .expect_err("half");
        assert!(err.contains("NEULBI_TLS_KEY"), "{err}");
        let mut s = TlsSettings::default();
        let err = s
            .apply_env(&env(&[("NEULBI_TLS_REDIRECT_LISTEN", "127.0.0.1:80")]))
            .expect_err("redirect alone");
        assert!(err.contains("needs a certificate"), "{err}");
        let mut s = TlsSettings::default();
        s.apply_env(&env(&[
            ("NEULBI_TLS_CERT", "/c.pem"),
            ("NEULBI_TLS_KEY", "/k.pem"),
            ("NEULBI_TLS_HSTS_MAX_AGE", "0"),
            ("NEULBI_TLS_RELOAD_SECS", "0"),
        ]))
        .expect("valid");
        assert!(s.enabled());
        assert_eq!(s.hsts(), None);
        assert_eq!(s.reload_secs, 1);
        let mut s = TlsSettings::default();
        let err = s
            .apply_env(&env(&[("NEULBI_TLS_HSTS_MAX_AGE", "forever")]))
            .expect_err("number");
        assert!(err.contains("not a number"), "{err}");
        assert_eq!(
            TlsSettings::default().hsts().as_deref(),
            Some("max-age=31536000")
        );
    }

    #[test]
    fn redirects_go_to_the_public_url_or_the_same_host_over_https() {
        assert_eq!(
            redirect_target(Some("https://neulbi.example/"), Some("x"), 8443, "/a?b=1").as_deref(),
            Some("https://neulbi.example/a?b=1")
        );
        assert_eq!(
            redirect_target(None, Some("neulbi.example:80"), 443, "/").as_deref(),
            Some("https://neulbi.example/")
        );
        assert_eq!(
            redirect_target(None, Some("127.0.0.1:8080"), 8443, "/chat").as_deref(),
            Some("https://127.0.0.1:8443/chat")
        );
        assert_eq!(
            redirect_target(None, Some("[::1]:80"), 443, "/").as_deref(),
            Some("https://[::1]/")
        );
        for bad in ["evil.example/x", "a b", "", "x@evil"] {
            assert_eq!(redirect_target(None, Some(bad), 443, "/"), None, "{bad}");
        }
        assert_eq!(redirect_target(None, None, 443, "/"), None);
    }

    #[test]
    fn broken_files_name_themselves() {
        let dir = tempfile::tempdir().expect("dir");
        let cert = dir.path().join("fullchain.pem");
        let key = dir.path().join("privkey.pem");
        let err = load(&cert, &key).expect_err("missing").to_string();
        assert!(err.contains("fullchain.pem"), "{err}");
        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(&key, "not pem either").expect("write");
        let err = load(&cert, &key).expect_err("garbage").to_string();
        assert!(
            err.contains("fullchain.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
    }
}
