//! The command line of `eac-controller`: `run` the controller, print the `crd`, or print shell
//! `completions`. A library
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
    /// Check an installation before (or while) it runs: the Kubernetes API, the CRDs, the
    /// controller's permissions, the AWS credentials and account, the Proton endpoint and the
    /// AccountMappings' roles. Takes the flags and environment of `run`; changes nothing; exits
    /// 1 when a check fails.
    Check(Box<CheckArgs>),
    /// Print a shell completion script, e.g. `eac-controller completions bash >
    /// /etc/bash_completion.d/eac-controller`, or `source <(eac-controller completions zsh)`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

/// `check`: the flags of `run`, and how to print the report.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Report format: text (one line a check) or json.
    #[arg(long, value_enum, default_value = "text")]
    pub output: CheckOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

/// Writes the completion script of `eac-controller` for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "eac-controller", out);
}
