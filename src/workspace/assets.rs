//! The workspace's and the demo page's files, compiled into the binary by `build.rs` in three
//! encodings (as written, gzip, brotli), with their content type and a strong ETag.

/// One file.
pub struct Asset {
    /// Its path below its directory (`index.html`, `js/app.js`).
    pub path: &'static str,
    /// A strong ETag, quoted (made from the content at build time).
    pub etag: &'static str,
    pub raw: &'static [u8],
    pub gzip: &'static [u8],
    pub brotli: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/workspace_assets.rs"));

impl Asset {
    /// The `Content-Type` its extension names (only types the workspace uses).
    pub fn content_type(&self) -> &'static str {
        match self.path.rsplit('.').next() {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("json") => "application/json",
            Some("png") => "image/png",
            _ => "application/octet-stream",
        }
    }
}

/// The file at `path` among `assets`.
pub fn find(assets: &'static [Asset], path: &str) -> Option<&'static Asset> {
    assets.iter().find(|a| a.path == path)
}
