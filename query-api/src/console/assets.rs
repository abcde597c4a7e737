//! The console's stylesheet and script, compiled into the binary and served from
//! `/console/assets/...`, so the console works with no network beyond the query API.
//! Each is linked with `?v=<hash of its content>`, computed at compile time, so a
//! browser may keep it for a year and still fetches a new build's file at once.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::pages::ConsoleError;
use crate::params::PathText;

/// How long a browser may keep an asset: its URL changes with its content.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    /// FNV-1a of the body: not for security, only to tell builds apart.
    pub version: u64,
}

impl Asset {
    /// The URL pages link it with.
    pub fn url(&self) -> String {
        format!("/console/assets/{}?v={:016x}", self.name, self.version)
    }
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        index += 1;
    }
    hash
}

const fn asset(name: &'static str, content_type: &'static str, body: &'static str) -> Asset {
    Asset {
        name,
        content_type,
        body,
        version: fnv1a(body.as_bytes()),
    }
}

pub static STYLESHEET: Asset = asset(
    "console.css",
    "text/css; charset=utf-8",
    include_str!("assets/console.css"),
);
pub static SCRIPT: Asset = asset(
    "console.js",
    "text/javascript; charset=utf-8",
    include_str!("assets/console.js"),
);

/// `GET /console/assets/{file}`.
pub async fn serve(PathText(file): PathText) -> Response {
    match [&STYLESHEET, &SCRIPT]
        .into_iter()
        .find(|asset| asset.name == file)
    {
        Some(asset) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, CACHE_CONTROL),
            ],
            asset.body,
        )
            .into_response(),
        None => ConsoleError::new(StatusCode::NOT_FOUND, "No such console file.").into_response(),
    }
}
