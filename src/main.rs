//! `eac-controller`: `run` the controller, print the `crd`, or shell `completions`. The flags are in
//! [`eac_controller::cli`]; this file only wires them to the controller.

use std::process::ExitCode;

use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use eac_controller::cli::{CheckOutput, Cli, Command};
use eac_controller::config::{Endpoint, RunArgs, resolve_endpoint};
use eac_controller::connection::api::crd_yaml;
use eac_controller::mapping;
use eac_controller::policy;
use eac_controller::runner;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let endpoint_from_cli = matches
        .subcommand_matches("run")
        .or_else(|| matches.subcommand_matches("check"))
        .and_then(|m| m.value_source("proton_endpoint"))
        .is_some_and(|s| s == clap::parser::ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Check(check) => {
            let endpoint = match checked(&check.run, endpoint_from_cli) {
                Ok(endpoint) => endpoint,
                Err(code) => return code,
            };
            // The report goes to stdout; logs (warnings and worse) to stderr.
            if let Err(e) = eac_controller::telemetry::init(check.run.log_format, "warn") {
                eprintln!("error: invalid RUST_LOG: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let report = runtime.block_on(runner::check(&check.run, &endpoint));
            match check.output {
                CheckOutput::Text => print!("{}", report.text()),
                CheckOutput::Json => println!("{}", report.json()),
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Completions { shell } => {
            eac_controller::cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Crd { plural } => {
            let rendered = match plural.as_deref() {
                None => crd_yaml().and_then(|eac| {
                    let mapping = mapping::api::crd_yaml()?;
                    let policy = policy::api::crd_yaml()?;
                    Ok(format!("{eac}---\n{mapping}---\n{policy}"))
                }),
                Some("environmentaccountconnections") => crd_yaml(),
                Some("accountmappings") => mapping::api::crd_yaml(),
                Some("connectionacceptancepolicies") => policy::api::crd_yaml(),
                Some(other) => {
                    eprintln!(
                        "error: no CRD named {other:?}; the CRDs are environmentaccountconnections, accountmappings and connectionacceptancepolicies"
                    );
                    return ExitCode::from(2);
                }
            };
            match rendered {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: could not render the CRD: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let endpoint = match checked(&args, endpoint_from_cli) {
                Ok(endpoint) => endpoint,
                Err(code) => return code,
            };
            if let Err(e) = eac_controller::telemetry::init(args.log_format, &args.log_level) {
                eprintln!("error: invalid --log-level / RUST_LOG: {e}");
                return ExitCode::from(2);
            }
            tune_malloc();
            // The controller mostly waits on the network: a few worker threads are plenty, and
            // on a node with many CPUs one thread each would only cost memory.
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            spawn_memory_trim(&runtime);
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

/// What `run` and `check` both refuse before anything starts: flags that contradict each other,
/// and a Proton endpoint that is malformed or `embedded` from the environment (exit status 2).
fn checked(args: &RunArgs, endpoint_from_cli: bool) -> Result<Endpoint, ExitCode> {
    let refused = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    args.check().map_err(|e| refused(&e))?;
    resolve_endpoint(
        args.proton_endpoint.as_deref(),
        endpoint_from_cli,
        std::env::var("AWS_ENDPOINT_URL_PROTON").ok().as_deref(),
    )
    .map_err(|e| refused(&e))
}

/// glibc's malloc keeps an arena per thread that ever allocated, and freed memory stays in them;
/// two arenas keep the resident set close to what the controller really holds (the scale
/// benchmark measured about 5 MiB less at 5,000 resources).
///
/// And a block of 128 KiB or more (a page of a list as text, a cache's table) that the heap has
/// no free room for gets pages of its own, handed back when freed; the heap's free top is handed
/// back past 128 KiB too. By default glibc raises both bounds as large blocks are freed, and
/// from then on takes the next page-sized blocks of a relist from its heap, where what is freed
/// between them stays resident: at 10,000 resources the relist after an API-server outage
/// peaked 2.7 to 3.9 MiB higher (benchmark part 5). Setting it overrides
/// `MALLOC_MMAP_THRESHOLD_` and `GLIBC_TUNABLES` (as the arena limit does).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets a parameter of the allocator; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Hands memory freed after a burst (a relist, thousands of reconciles) back to the system:
/// glibc keeps freed pages in the middle of its heap until asked.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_memory_trim(runtime: &tokio::runtime::Runtime) {
    runtime.spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn_memory_trim(_: &tokio::runtime::Runtime) {}
