//! What can fail a reconcile of a connection: a Kubernetes call, an object without the
//! metadata a reconcile needs, or a cached copy behind the server.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} of {object} failed: {source}")]
    Kube {
        step: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    MissingMetadata(#[from] crate::reconciler::MissingMetadata),
    /// The watch cache is behind the server (a write of ours it has not shown yet): this
    /// reconcile stops before acting on the stale copy and runs again on the fresh one.
    #[error("the cached copy of {0} is behind the server")]
    StaleCache(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_error",
            Error::MissingMetadata(..) => "invalid_object",
            Error::StaleCache(_) => "stale_cache",
        }
    }
}
