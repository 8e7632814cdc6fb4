//! The `[auth]` section of the configuration. Secrets (signing key, lookup secret, service
//! client secrets) are read from the environment only, never from the file, so a config file
//! can be committed or shared without leaking them.

use super::providers::{ProviderKind, ProviderSettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A registered service client (dashboards, audit tools) using `client_credentials`.
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceClient {
    /// The `client_id` it presents.
    pub id: String,
    /// The scopes it may be granted; a request may ask for a subset.
    pub scopes: Vec<String>,
    /// Its secret, from `NEULBI_CLIENT_SECRET_<ID>` (id upper-cased, `-` as `_`).
    #[serde(skip)]
    pub secret: Option<String>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("id", &self.id)
            .field("scopes", &self.scopes)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Sign-in and token settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The `aud` of access tokens; the API accepts no other.
    pub audience: String,
    /// Lifetime of an access JWT, in seconds (short: refresh tokens renew it).
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds.
    pub refresh_token_ttl_secs: u64,
    /// Lifetime of a one-time login code, in seconds.
    pub login_code_ttl_secs: u64,
    /// Failed local sign-ins per account (and ten times as many per client address) allowed
    /// within `login_window_secs` before further attempts get 429.
    pub login_max_failures: u32,
    /// The window of `login_max_failures`, in seconds.
    pub login_window_secs: u64,
    /// Seed the demo users on startup. Unset: only for the embedded default (SQLite in the
    /// data dir, no `database_url`).
    pub seed_demo_users: Option<bool>,
    /// Mark the refresh-token cookie `Secure` (browsers still accept it on localhost).
    pub cookie_secure: bool,
    /// Registered service clients.
    pub service_clients: Vec<ServiceClient>,
    /// External sign-in providers by name (`[auth.providers.google]`, ...). A provider without
    /// a client id (`NEULBI_AUTH_<NAME>_CLIENT_ID`) is not offered.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Where the browser lands after an external sign-in (with `#login_code=...`); default:
    /// the public URL's root.
    pub web_client_url: Option<String>,
    /// Further allowed return URLs (scheme, host, port and path prefix must match).
    pub allowed_return_urls: Vec<String>,
    /// Timeout of every request to a provider, in seconds.
    pub provider_timeout_secs: u64,
    /// PKCS#8 PEM of the Ed25519 signing key (`NEULBI_AUTH_SIGNING_KEY`). Unset: keys are
    /// generated and kept in the database.
    #[serde(skip)]
    pub signing_key_pem: Option<String>,
    /// PEM blocks (public or private Ed25519 keys) that still verify tokens after a rotation
    /// (`NEULBI_AUTH_VERIFY_KEYS`).
    #[serde(skip)]
    pub verify_keys_pem: Option<String>,
    /// The secret keying the identity lookup hashes (`NEULBI_AUTH_SECRET`, at least 32
    /// bytes). Unset: generated and kept in the database.
    #[serde(skip)]
    pub lookup_secret: Option<String>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| v.as_ref().map(|_| "<set>");
        f.debug_struct("AuthSettings")
            .field("audience", &self.audience)
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field("login_code_ttl_secs", &self.login_code_ttl_secs)
            .field("login_max_failures", &self.login_max_failures)
            .field("login_window_secs", &self.login_window_secs)
            .field("seed_demo_users", &self.seed_demo_users)
            .field("cookie_secure", &self.cookie_secure)
            .field("service_clients", &self.service_clients)
            .field("providers", &self.providers)
            .field("web_client_url", &self.web_client_url)
            .field("allowed_return_urls", &self.allowed_return_urls)
            .field("provider_timeout_secs", &self.provider_timeout_secs)
            .field("signing_key_pem", &set(&self.signing_key_pem))
            .field("verify_keys_pem", &set(&self.verify_keys_pem))
            .field("lookup_secret", &set(&self.lookup_secret))
            .finish()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            audience: "neulbi-api".into(),
            access_token_ttl_secs: 600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            login_code_ttl_secs: 60,
            login_max_failures: 5,
            login_window_secs: 300,
            seed_demo_users: None,
            cookie_secure: true,
            service_clients: Vec::new(),
            providers: BTreeMap::new(),
            web_client_url: None,
            allowed_return_urls: Vec::new(),
            provider_timeout_secs: 10,
            signing_key_pem: None,
            verify_keys_pem: None,
            lookup_secret: None,
        }
    }
}

impl AuthSettings {
    /// Reads the secrets (and a few knobs) from the environment through `get`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = non_empty("NEULBI_AUTH_SIGNING_KEY") {
            self.signing_key_pem = Some(v);
        }
        if let Some(v) = non_empty("NEULBI_AUTH_VERIFY_KEYS") {
            self.verify_keys_pem = Some(v);
        }
        if let Some(v) = non_empty("NEULBI_AUTH_SECRET") {
            self.lookup_secret = Some(v);
        }
        if let Some(v) = non_empty("NEULBI_AUTH_SEED_DEMO") {
            self.seed_demo_users = Some(matches!(v.trim(), "1" | "true" | "yes"));
        }
        // The well-known providers need nothing in the file: their client id turns them on.
        for (name, kind) in [
            ("google", ProviderKind::Google),
            ("naver", ProviderKind::Naver),
            ("kakao", ProviderKind::Kakao),
        ] {
            if non_empty(&format!(
                "NEULBI_AUTH_{}_CLIENT_ID",
                name.to_ascii_uppercase()
            ))
            .is_some()
            {
                self.providers
                    .entry(name.to_owned())
                    .or_insert_with(|| ProviderSettings::new(kind));
            }
        }
        // One generic OpenID Connect issuer from the environment, named `oidc`.
        if let Some(issuer) = non_empty("NEULBI_AUTH_OIDC_ISSUER") {
            self.providers
                .entry("oidc".to_owned())
                .or_insert_with(|| ProviderSettings::new(ProviderKind::Oidc))
                .issuer_url = Some(issuer);
        }
        for (name, provider) in &mut self.providers {
            let prefix = format!(
                "NEULBI_AUTH_{}",
                name.to_ascii_uppercase().replace('-', "_")
            );
            if let Some(v) = non_empty(&format!("{prefix}_CLIENT_ID")) {
                provider.client_id = Some(v);
            }
            if let Some(v) = non_empty(&format!("{prefix}_CLIENT_SECRET")) {
                provider.client_secret = Some(v);
            }
        }
        for client in &mut self.service_clients {
            let var = format!(
                "NEULBI_CLIENT_SECRET_{}",
                client.id.to_ascii_uppercase().replace('-', "_")
            );
            if let Some(v) = non_empty(&var) {
                client.secret = Some(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_providers_come_from_the_environment() {
        let env = |k: &str| match k {
            "NEULBI_AUTH_GOOGLE_CLIENT_ID" => Some("gid".to_owned()),
            "NEULBI_AUTH_GOOGLE_CLIENT_SECRET" => Some("gsecret".to_owned()),
            "NEULBI_AUTH_OIDC_ISSUER" => Some("https://id.example".to_owned()),
            "NEULBI_AUTH_OIDC_CLIENT_ID" => Some("oid".to_owned()),
            "NEULBI_CLIENT_SECRET_AUDIT_TOOL" => Some("s3cret".to_owned()),
            "NEULBI_AUTH_SECRET" => Some("x".repeat(32)),
            _ => None,
        };
        let mut s = AuthSettings {
            service_clients: vec![ServiceClient {
                id: "audit-tool".into(),
                scopes: vec!["audit:read".into()],
                secret: None,
            }],
            ..AuthSettings::default()
        };
        s.apply_env(&env);
        let google = &s.providers["google"];
        assert_eq!(google.kind, ProviderKind::Google);
        assert_eq!(google.client_id.as_deref(), Some("gid"));
        assert_eq!(google.client_secret.as_deref(), Some("gsecret"));
        assert_eq!(
            s.providers["oidc"].issuer_url.as_deref(),
            Some("https://id.example")
        );
        assert!(!s.providers.contains_key("naver"));
        assert_eq!(s.service_clients[0].secret.as_deref(), Some("s3cret"));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("gsecret") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn the_auth_section_parses_from_toml() {
        let text = r#"
            [auth]
            access_token_ttl_secs = 300
            allowed_return_urls = ["https://app.example/"]

            [[auth.service_clients]]
            id = "dashboard"
            scopes = ["audit:read"]

            [auth.providers.google]
            kind = "google"

            [auth.providers.company]
            kind = "oidc"
            issuer_url = "https://sso.example"
            display_name = "Company SSO"
        "#;
        let config: crate::config::Config = toml::from_str(text).expect("parses");
        assert_eq!(config.auth.access_token_ttl_secs, 300);
        assert_eq!(config.auth.service_clients[0].id, "dashboard");
        assert_eq!(config.auth.providers["company"].kind, ProviderKind::Oidc);
        assert!(config.auth.providers["google"].client_id.is_none());
        let secret_in_file = "[auth.providers.google]\nkind = \"google\"\nclient_secret = \"x\"\n";
        assert!(
            toml::from_str::<crate::config::Config>(secret_in_file).is_err(),
            "secrets are not accepted from the file"
        );
    }
}
