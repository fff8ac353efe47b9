//! `GET /openapi.json` and `GET /docs`: the API description, and a page rendered from it on the
//! server (no scripts or assets from elsewhere, so it works offline).

use std::fmt::Write;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

/// The OpenAPI document (a test checks it describes exactly the routes the app serves).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

static PAGE: LazyLock<String> = LazyLock::new(|| {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON");
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>analytics_api</title>\
         <style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         code{background:#f3f3f3;padding:0 .2rem}h2{margin-top:2rem}\
         .m{display:inline-block;min-width:4rem;font-weight:bold}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>{}</h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p>",
        escape(doc["info"]["title"].as_str().unwrap_or("")),
        escape(doc["info"]["description"].as_str().unwrap_or(""))
    );
    for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            let _ = write!(
                html,
                "<h2><span class=\"m\">{}</span><code>{}</code></h2><p>{}</p>",
                method.to_uppercase(),
                escape(path),
                escape(op["summary"].as_str().unwrap_or(""))
            );
            if let Some(params) = op["parameters"].as_array() {
                html.push_str("<p>Parameters:</p><ul>");
                for p in params {
                    let _ = write!(
                        html,
                        "<li><code>{}</code> ({}){}</li>",
                        escape(p["name"].as_str().unwrap_or("")),
                        escape(p["in"].as_str().unwrap_or("")),
                        p["description"]
                            .as_str()
                            .map(|d| format!(": {}", escape(d)))
                            .unwrap_or_default()
                    );
                }
                html.push_str("</ul>");
            }
            html.push_str("<ul>");
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                let _ = write!(
                    html,
                    "<li><b>{}</b> {}</li>",
                    escape(status),
                    escape(r["description"].as_str().unwrap_or(""))
                );
            }
            html.push_str("</ul>");
        }
    }
    html.push_str("</body></html>");
    html
});

/// `GET /docs`.
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE.as_str())
}
