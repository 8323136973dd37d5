//! `eac-controller`: `run` the controller, or print the `crd`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use eac_controller::api::crd_yaml;
use eac_controller::config::{RunArgs, resolve_endpoint};
use eac_controller::runner;

#[derive(Parser)]
#[command(
    name = "eac-controller",
    version,
    about = "Keeps AWS Proton environment account connections in step with Kubernetes resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the current kubeconfig / in-cluster config.
    Run(Box<RunArgs>),
    /// Print the EnvironmentAccountConnection CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let endpoint_from_cli = matches
        .subcommand_matches("run")
        .and_then(|m| m.value_source("proton_endpoint"))
        .is_some_and(|s| s == clap::parser::ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Crd => match crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: could not render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            if let Err(e) = args.check() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let endpoint = match resolve_endpoint(
                args.proton_endpoint.as_deref(),
                endpoint_from_cli,
                std::env::var("AWS_ENDPOINT_URL_PROTON").ok().as_deref(),
            ) {
                Ok(endpoint) => endpoint,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = eac_controller::telemetry::init(args.log_format, &args.log_level) {
                eprintln!("error: invalid --log-level / RUST_LOG: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(runner::run(Arc::new(*args), endpoint)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
