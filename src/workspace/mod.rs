//! The agents' workspace: the browser application agents open at `/workspace/` to sign in,
//! take conversations and talk to consumers, and, when `[relay.demo]` enables it, a minimal
//! consumer chat at `/demo/` for trying the relay out.
//!
//! This module only serves files: the applications are clients of the relay's public
//! protocol (its agent login and REST, its WebSocket), like any other; nothing here reads a
//! session or a conversation. The files are compiled into the binary (`assets`), compressed
//! once at build time; each answer picks brotli, gzip or the file as written by the browser's
//! `Accept-Encoding`, carries a strong ETag (`If-None-Match` gives `304`), and must be
//! revalidated before reuse (`no-cache`: a new brandgate is seen at once).
//!
//! Every page is held to a Content-Security-Policy with no inline script or style and no
//! `eval`, that only lets it load its own files and talk to its own origin (HTTPS and WSS),
//! and that requires Trusted Types for every DOM sink, so a slip that would put text in the
//! page as HTML fails instead of running.

mod assets;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde_json::json;

pub use assets::Asset;

/// What the pages need from the config.
#[derive(Clone)]
struct Settings {
    account: String,
    workspace: bool,
    demo: bool,
    /// The single sign-on choices: (name on the button, where it starts).
    sso: Vec<(String, String)>,
    /// Whether every agent may sign in with a password (not when single sign-on is required).
    passwords: bool,
}

/// The workspace's single sign-on buttons: the name on each, and where it starts. With both
/// methods configured, each name says which.
fn sign_on_buttons(config: &crate::config::RelayConfig) -> Vec<(String, String)> {
    let Some(sso) = &config.agents.sso else {
        return Vec::new();
    };
    let both = sso.oidc.is_some() && sso.saml.is_some();
    let account = &config.account;
    [
        (
            sso.oidc.is_some(),
            "OpenID Connect",
            crate::relay::oidc_start_path(account),
        ),
        (
            sso.saml.is_some(),
            "SAML",
            crate::relay::saml_start_path(account),
        ),
    ]
    .into_iter()
    .filter(|(on, _, _)| *on)
    .map(|(_, method, path)| {
        let name = if both {
            format!("{} ({method})", sso.name)
        } else {
            sso.name.clone()
        };
        (name, path)
    })
    .collect()
}

/// The routes: `/workspace/...` (unless disabled) and `/demo/...` (when enabled).
pub fn router(config: &crate::config::RelayConfig) -> Router {
    let settings = Settings {
        account: config.account.clone(),
        workspace: config.workspace.enabled,
        demo: config.demo.enabled,
        sso: sign_on_buttons(config),
        passwords: !config.agents.sso.as_ref().is_some_and(|sso| sso.required),
    };
    let mut router = Router::new();
    if settings.workspace {
        router = router
            .route(
                "/workspace",
                get(|| async { Redirect::permanent("/workspace/") }),
            )
            .route("/workspace/", get(workspace_index))
            .route("/workspace/config.json", get(workspace_config))
            .route("/workspace/{*path}", get(workspace_file));
    }
    if settings.demo {
        router = router
            .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
            .route("/demo/", get(demo_index))
            .route("/demo/{*path}", get(demo_file));
    }
    router.with_state(settings)
}

/// The workspace's files, and the demo's, in the order `build.rs` found them.
#[cfg(test)]
fn files() -> (&'static [Asset], &'static [Asset]) {
    (assets::WORKSPACE, assets::DEMO)
}

async fn workspace_index(uri: Uri, headers: HeaderMap) -> Response {
    serve(assets::WORKSPACE, "index.html", &uri, &headers)
}

async fn workspace_file(Path(path): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    serve(assets::WORKSPACE, &path, &uri, &headers)
}

async fn demo_index(uri: Uri, headers: HeaderMap) -> Response {
    serve(assets::DEMO, "index.html", &uri, &headers)
}

async fn demo_file(Path(path): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    serve(assets::DEMO, &path, &uri, &headers)
}

/// `GET /workspace/config.json`: what the sign-in page shows before anyone signs in: the
/// account, the single sign-on choices (`{"name", "href"}`), and whether every agent may use a
/// password (`false` when single sign-on is required: the form is for break-glass agents).
async fn workspace_config(State(settings): State<Settings>) -> Response {
    let sso: Vec<_> = settings
        .sso
        .iter()
        .map(|(name, href)| json!({"name": name, "href": href}))
        .collect();
    let mut r = axum::Json(json!({
        "account": settings.account,
        "sso": sso,
        "passwords": settings.passwords,
        "demo": settings.demo,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// One file, in the best encoding the browser takes, or `304`/`404`.
fn serve(assets: &'static [Asset], path: &str, uri: &Uri, headers: &HeaderMap) -> Response {
    let Some(asset) = assets::find(assets, path) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mut response = if if_none_match(headers, asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let (body, encoding) = match preferred_encoding(headers) {
            Encoding::Brotli => (asset.brotli, Some("br")),
            Encoding::Gzip => (asset.gzip, Some("gzip")),
            Encoding::Identity => (asset.raw, None),
        };
        let mut r = body.into_response();
        if let Some(e) = encoding {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
        }
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type()),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        content_security_policy(crate::http_auth::request_authority(headers, uri)),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    response
}

/// The pages' policy: their own files only, their own origin to talk to (and its WSS), no
/// inline code, no framing, Trusted Types required (and no policy may be made).
fn content_security_policy(authority: Option<&str>) -> HeaderValue {
    // The socket's origin is this host's, as the browser addressed it ('self' covers it too in
    // browsers that follow CSP 3).
    let wss = authority.map(|h| format!(" wss://{h}")).unwrap_or_default();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'{wss}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
         require-trusted-types-for 'script'; trusted-types 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
             require-trusted-types-for 'script'; trusted-types 'none'",
        )
    })
}

/// Whether the browser's copy (`If-None-Match`) is this one.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
        })
}

#[derive(Debug, PartialEq, Eq)]
enum Encoding {
    Brotli,
    Gzip,
    Identity,
}

/// The best encoding `Accept-Encoding` allows (a `q=0` refuses one).
fn preferred_encoding(headers: &HeaderMap) -> Encoding {
    let accepted = |name: &str| {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|item| {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
                });
                coding.eq_ignore_ascii_case(name) && !refused
            })
    };
    if accepted("br") {
        Encoding::Brotli
    } else if accepted("gzip") {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_best_accepted_encoding_is_chosen() {
        assert_eq!(
            preferred_encoding(&headers(&[("accept-encoding", "gzip, deflate, br, zstd")])),
            Encoding::Brotli
        );
        assert_eq!(
            preferred_encoding(&headers(&[("accept-encoding", "gzip;q=0.8, br;q=0")])),
            Encoding::Gzip
        );
        assert_eq!(preferred_encoding(&headers(&[])), Encoding::Identity);
    }

    #[test]
    fn every_file_decompresses_to_itself_and_the_budget_holds() {
        use std::io::Read;
        let (workspace, demo) = files();
        assert!(assets::find(workspace, "index.html").is_some());
        assert!(assets::find(demo, "index.html").is_some());
        let mut code = 0;
        for a in workspace.iter().chain(demo) {
            let mut gunzipped = Vec::new();
            flate2::read::GzDecoder::new(a.gzip)
                .read_to_end(&mut gunzipped)
                .unwrap();
            assert_eq!(gunzipped, a.raw, "{} (gzip)", a.path);
            let mut unbrotlied = Vec::new();
            brotli::Decompressor::new(a.brotli, 4096)
                .read_to_end(&mut unbrotlied)
                .unwrap();
            assert_eq!(unbrotlied, a.raw, "{} (brotli)", a.path);
            if a.path.ends_with(".js") || a.path.ends_with(".css") {
                code += a.raw.len();
            }
        }
        // The page weight budget (README): all JS and CSS of both pages, as written.
        assert!(code <= 150 * 1024, "{code} bytes of JS and CSS");
    }
}
