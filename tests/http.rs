//! The operations endpoint over real HTTP on 127.0.0.1: /healthz, /readyz, /metrics.

use eac_controller::http::{Readiness, serve};
use eac_controller::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let (addr, _task) = serve(
        ([127, 0, 0, 1], 0).into(),
        metrics.clone(),
        readiness.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "not ready while starting");
    assert!(body.contains("starting"), "{body}");
    readiness.leading();
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(
        code, 503,
        "a leader is not ready before its watch cache synced"
    );
    assert!(body.contains("not synced"), "{body}");
    readiness.synced();
    assert_eq!(get(addr, "/readyz").await.0, 200);
    readiness.standby();
    assert_eq!(
        get(addr, "/readyz").await.0,
        200,
        "a healthy standby is ready"
    );

    metrics.aws_call("CreateEnvironmentAccountConnection", "success");
    metrics.reconciled("settled", std::time::Duration::from_millis(20));
    metrics.set_leader(true);
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "eac_reconcile_total{result=\"settled\"} 1",
        "eac_reconcile_duration_seconds_count 1",
        "eac_aws_requests_total{operation=\"CreateEnvironmentAccountConnection\",outcome=\"success\"} 1",
        "eac_aws_throttled_total 0",
        "eac_leader 1",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    assert_eq!(get(addr, "/nope").await.0, 404);
}
