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

const ASSETS: [Asset; 5] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../web/index.html"),
    },
    Asset {
        path: "/web/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/app.js"),
    },
    Asset {
        path: "/web/call.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/call.js"),
    },
    Asset {
        path: "/web/vendor/stomp.umd.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/vendor/stomp.umd.min.js"),
    },
    Asset {
        path: SOCKJS_CLIENT_PATH,
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/vendor/sockjs.min.js"),
    },
];

/// Scripts and connections from this origin only; profile images may come from the
/// configured S3 endpoint (presigned https URLs).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' https: data:; connect-src 'self'; frame-ancestors 'none'; \
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
