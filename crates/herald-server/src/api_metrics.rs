//! Counts HTTP API responses by app and status (`herald_api_responses_total{app,status}`).
//!
//! The app label is the path's app id only when the engine serves that app; any other id counts as
//! `unknown`, so a client inventing ids cannot grow the number of series.

use std::sync::Weak;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use herald_core::Engine;

/// The middleware: runs the request, then counts its response under `/apps/...`.
pub(crate) async fn count(engine: Weak<Engine>, request: Request, next: Next) -> Response {
    let app = api_app(request.uri().path()).map(|id| match engine.upgrade() {
        Some(engine) if engine.by_id(id).is_some() => id.to_string(),
        _ => "unknown".to_string(),
    });
    let response = next.run(request).await;
    if let Some(app) = app {
        let status = response.status().as_u16().to_string();
        metrics::counter!("herald_api_responses_total", "app" => app, "status" => status).increment(1);
    }
    response
}

/// The app id of an HTTP API path (`/apps/{id}/...`).
fn api_app(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/apps/")?;
    Some(rest.split('/').next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_of_api_paths_only() {
        assert_eq!(api_app("/apps/1/events"), Some("1"));
        assert_eq!(api_app("/apps/"), Some(""));
        assert_eq!(api_app("/app/key"), None);
        assert_eq!(api_app("/metrics"), None);
    }
}
