//! The optional HTTP listener: `/metrics` (Prometheus), `/livez` and `/readyz`.
//!
//! Off unless `[http] listen` is set. It knows nothing of the bridge: it calls the
//! [`Endpoints`] it is given. Binding beyond loopback exposes metrics (topic filters, channel
//! names, counts) to the network; there is no authentication.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Readiness as the endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Whether the service is ready.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
    /// What is wrong while the service stays ready (e.g. a side that is down while the
    /// spool absorbs the outage); reported in the body only when not empty.
    pub degraded: Vec<String>,
}

/// What the endpoints serve.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// Current readiness.
    fn ready(&self) -> Ready;
}

/// Binds `addr`; errors name the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<dyn Endpoints>,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP listener started (/metrics, /livez, /readyz).");
    }
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                warn!(error = %e, "HTTP accept failed.");
                continue;
            }
        };
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let endpoints = Arc::clone(&endpoints);
                async move { Ok::<_, Infallible>(respond(&request, endpoints.as_ref())) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "HTTP connection ended with an error.");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, endpoints: &dyn Endpoints) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(endpoints.metrics())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let ready = endpoints.ready();
            let status = if ready.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = serde_json::json!({ "ready": ready.ready, "reasons": ready.reasons });
            if !ready.degraded.is_empty() {
                body["degraded"] = ready.degraded.into();
            }
            let body = body.to_string();
            let mut response = Response::new(Full::new(Bytes::from(body + "\n")));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `bayeux-mqtt-bridge health --url URL`: exits 0 if `url` answers 200 (Docker's
/// HEALTHCHECK without curl in the image).
pub async fn probe(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Ready);

    impl Endpoints for Fixed {
        fn metrics(&self) -> String {
            "bridge_ready 1\n# EOF\n".to_owned()
        }
        fn ready(&self) -> Ready {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn serves_metrics_livez_and_readyz() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let not_ready = Ready {
            ready: false,
            reasons: vec!["MQTT broker not connected".into()],
            degraded: Vec::new(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(Fixed(not_ready)), async {
            let _ = stopped.await;
        }));
        let base = format!("http://{addr}");
        let get = |path: &str| reqwest::get(format!("{base}{path}"));
        let metrics = get("/metrics").await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(metrics.text().await.unwrap().contains("bridge_ready 1"));
        assert_eq!(get("/livez").await.unwrap().status(), 200);
        let ready = get("/readyz").await.unwrap();
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["reasons"][0], "MQTT broker not connected");
        assert_eq!(get("/nope").await.unwrap().status(), 404);
        assert!(
            probe(&format!("{base}/readyz"))
                .await
                .unwrap_err()
                .contains("503")
        );
        assert!(probe(&format!("{base}/livez")).await.is_ok());
        let _ = stop.send(());
        server.await.unwrap();
    }
}
