//! How the controller's clients reach the API server: kube's own stack (its TLS, credentials,
//! base URI and headers), on TCP connections with keepalive and a user timeout.
//!
//! kube's client speaks HTTP/1.1 on connections with neither: a connection whose peer is gone
//! without a reset (a control-plane host lost, a partition, the target of a pass-through load
//! balancer such as the `kubernetes` Service or an AWS NLB replaced) leaves a watch silent until
//! kube-runtime's idle timeout (295 s) and a request on it retransmitting for about 15 minutes,
//! its worker held all along. client-go notices the same through HTTP/2 pings in about 45 s.
//! Here an idle connection is probed after [`KEEPALIVE_IDLE`], and one whose data or probes go
//! unacknowledged for [`USER_TIMEOUT`] fails: the watch or the call that used it sees an error
//! and tries again on a new connection. (A proxy that ends TCP itself, HAProxy in front of
//! kubeadm's API servers say, answers the probes for a dead server: there the watch's idle
//! timeout still applies.)
//!
//! What differs from kube's own stack besides: no `TraceLayer` (its debug spans, and an `error`
//! line for every failed try, which the controller logs its own way), and no `valid_until` (the
//! expiry of an exec plugin's client certificate, which nothing here reads). Were kube's `gzip`
//! feature turned on, its decompression layer would have to be added here too.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// kube's client stack as `ClientBuilder::try_from` makes it (its `GenericService`).
pub type Stack = BoxService<http::Request<Body>, http::Response<Box<DynBody>>, BoxError>;

/// How long a connection may be idle before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// Between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long sent data or probes may go unacknowledged before the connection fails: an answer to
/// a slow request is not awaited here (the server acknowledges what it receives at once), only
/// the peer's kernel.
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The TCP connector under the TLS one: keepalive and the user timeout (Linux), and kube's
/// `enforce_http(false)` (the TLS connector above it takes `https`).
pub fn tcp_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_keepalive(Some(KEEPALIVE_IDLE));
    connector.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    connector.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    connector.set_tcp_user_timeout(Some(USER_TIMEOUT));
    connector
}

/// kube's client stack for `config` (`ClientBuilder::try_from`), on [`tcp_connector`], without
/// kube's own retry (`default_retry`): the controller's client bounds its retry itself, and the
/// Lease's retries nothing inside a call (`runner`). With a proxy (`proxy-url` in the
/// kubeconfig, or `HTTPS_PROXY`) kube's own is used otherwise as it is: it refuses one it was
/// not built to tunnel through, as before.
pub fn builder(mut config: kube::Config) -> Result<ClientBuilder<Stack>, kube::Error> {
    config.default_retry = false;
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config);
    }
    // As `ClientBuilder::try_from`: rustls needs a process-wide crypto provider.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Only fails if another thread installed one meanwhile: that one serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let https = config.rustls_https_connector_with_connector(tcp_connector())?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client)
        .map_response(|response| {
            response.map(|body| Box::new(body.map_err(BoxError::from)) as Box<DynBody>)
        })
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::Service;

    use super::*;

    /// An API server over TLS with a self-signed certificate for 127.0.0.1, answering
    /// `/version`: its URL and its certificate (DER).
    async fn tls_api_server() -> (String, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("a certificate");
        let der = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("a server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a listener");
        let url = format!("https://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = r#"{"major":"1","minor":"36","gitVersion":"v1.36.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (url, der.to_vec())
    }

    /// The stack speaks TLS as kube's does: it trusts the kubeconfig's certificate authority and
    /// no other (the test cannot pass with TLS left out).
    #[tokio::test]
    async fn the_client_reaches_an_api_server_over_tls_it_trusts_and_no_other() {
        let (url, certificate) = tls_api_server().await;
        let mut config = kube::Config::new(url.parse().expect("a URL"));
        config.root_cert = Some(vec![certificate]);
        let client = builder(config).expect("a client").build();
        let version = client.apiserver_version().await.expect("answered over TLS");
        assert_eq!(version.git_version, "v1.36.0");

        let untrusted = builder(kube::Config::new(url.parse().expect("a URL")))
            .expect("a client")
            .build();
        let refused = untrusted.apiserver_version().await;
        assert!(refused.is_err(), "an unknown certificate: {refused:?}");
    }

    /// The connections it makes probe an idle peer and give up on one that acknowledges
    /// nothing, as the socket shows.
    #[tokio::test]
    async fn its_connections_have_keepalive_and_a_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a listener");
        let uri: http::Uri = format!("http://{}", listener.local_addr().expect("its address"))
            .parse()
            .expect("a URI");
        let stream = tcp_connector().call(uri).await.expect("connected");
        let socket = socket2::SockRef::from(stream.inner());
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            KEEPALIVE_IDLE
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 3);
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(USER_TIMEOUT)
        );
    }
}
