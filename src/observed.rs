//! A layer of the controller's Kubernetes client that shows each call, and how it was answered,
//! to an observer: what `/readyz` learns from the watches' starts (`watch_starts`), and what
//! wakes the watches at the API server's return (`api_answers`).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

/// Sees the calls of a client: each request as it is sent, and its answer.
pub trait Observe: Clone + Send + 'static {
    /// What the observer keeps of a request until it is answered.
    type Sent: Send + 'static;

    /// A request is sent: `None` if it is of no interest.
    fn sent<B>(&self, request: &http::Request<B>) -> Option<Self::Sent>;

    /// The request's answer: its status, or `None` if it got none (no connection, a connection
    /// lost, a timeout).
    fn answered(&self, sent: Self::Sent, status: Option<http::StatusCode>);
}

/// Shows the calls of the service it wraps to `O`.
#[derive(Clone)]
pub struct ObserveLayer<O>(pub O);

impl<S, O: Clone> Layer<S> for ObserveLayer<O> {
    type Service = Observed<S, O>;

    fn layer(&self, inner: S) -> Observed<S, O> {
        Observed {
            inner,
            observer: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observed<S, O> {
    inner: S,
    observer: O,
}

impl<S, O, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observed<S, O>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    O: Observe,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let sent = self.observer.sent(&request);
        let answer = self.inner.call(request);
        let observer = self.observer.clone();
        Box::pin(async move {
            let answer = answer.await;
            if let Some(sent) = sent {
                observer.answered(sent, answer.as_ref().ok().map(http::Response::status));
            }
            answer
        })
    }
}
