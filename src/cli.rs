//! The command line of `eac-controller`: `run` the controller, or print the `crd`. A library
//! module (the binary only wires it up) so tests can run an argument list through the very
//! parser the binary uses, and [`RunArgs::check`] after it, before they start a process.

use clap::{Parser, Subcommand};

use crate::config::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "eac-controller",
    version,
    about = "Keeps AWS Proton environment account connections in step with Kubernetes resources"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against the current kubeconfig / in-cluster config.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (all, or the one named by its plural).
    Crd {
        /// `environmentaccountconnections`, `accountmappings` or
        /// `connectionacceptancepolicies`; unset: every CRD, as one multi-document YAML stream
        /// (what `kubectl apply -f -` takes).
        plural: Option<String>,
    },
}
