//! The browser client: `web/` compiled into the binary, so `serve` needs no files beside it.
//! Pages get a Content-Security-Policy that allows scripts, styles' sources and connections
//! to this origin only; the page itself puts server text on screen as text, never as HTML.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use std::sync::LazyLock;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Where the vendored sockjs-client is served (the SockJS iframe page loads it).
pub const SOCKJS_CLIENT_PATH: &str = "/web/vendor/sockjs.min.js";

/// One embedded file of `web/`, served at `/web/{path}` with the type its extension names.
macro_rules! web_file {
    ($path:literal) => {
        Asset {
            path: concat!("/web/", $path),
            content_type: content_type($path),
            body: include_str!(concat!("../../../web/", $path)),
        }
    };
}

/// The content type of an embedded file, by extension.
const fn content_type(path: &str) -> &'static str {
    let b = path.as_bytes();
    let n = b.len();
    if n > 4 && b[n - 4] == b'.' && b[n - 3] == b'c' && b[n - 2] == b's' && b[n - 1] == b's' {
        "text/css; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    }
}

/// Every file of the client. `tests::every_web_file_is_served` keeps this list and `web/`
/// in step.
const ASSETS: [Asset; 16] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../web/index.html"),
    },
    web_file!("styles.css"),
    web_file!("app.js"),
    web_file!("call.js"),
    web_file!("dom.js"),
    web_file!("i18n.js"),
    web_file!("live.js"),
    web_file!("session.js"),
    web_file!("pages/account.js"),
    web_file!("pages/directory.js"),
    web_file!("pages/history.js"),
    web_file!("pages/profile.js"),
    web_file!("pages/rooms.js"),
    web_file!("pages/signin.js"),
    web_file!("vendor/stomp.umd.min.js"),
    web_file!("vendor/sockjs.min.js"),
];

/// Scripts, styles and connections from this origin only (no inline styles or scripts);
/// profile images may come from the configured S3 endpoint (presigned https URLs) and from
/// `blob:` (the preview of a photo before it is uploaded).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' https: data: blob:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Registers each embedded file at its path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for asset in &ASSETS {
        cfg.route(asset.path, web::get().to(serve));
    }
}

/// Each asset's entity tag: the files change only with the binary.
static ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body.as_bytes())).collect());

/// A strong entity tag for a static body (a digest prefix), shared with the SockJS iframe.
pub fn etag(body: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(body);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

async fn serve(req: HttpRequest) -> HttpResponse {
    let Some(i) = ASSETS.iter().position(|a| a.path == req.path()) else {
        return HttpResponse::NotFound().finish();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return HttpResponse::NotModified().finish();
    }
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        // Not `no-referrer`: that makes same-origin form POSTs (SockJS jsonp_send) carry
        // `Origin: null`, which the origin check refuses.
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to `web/` and forgotten here would be a 404 in the browser.
    #[test]
    fn every_web_file_is_served() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("web/") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "js" || e == "css") {
                    let rel = path.strip_prefix(&root).expect("under web/");
                    files.push(format!("/web/{}", rel.to_string_lossy()));
                }
            }
        }
        for file in &files {
            assert!(
                ASSETS.iter().any(|a| a.path == file),
                "{file} is not embedded"
            );
        }
        assert_eq!(files.len() + 1, ASSETS.len(), "an embedded file is gone");
        assert_eq!(
            ASSETS[1].content_type, "text/css; charset=utf-8",
            "styles.css is CSS"
        );
    }
}
