//! Logging: `tracing` as text or JSON; the level from `--log-level`, overridden by `RUST_LOG`.
//!
//! Text is coloured only when it goes to a terminal and `NO_COLOR` is unset (or empty), so a log
//! written to a file or a pipe carries no escape codes for `grep` or a log shipper to trip on.
//! Text and JSON carry the same fields: the event's, and those of the spans it is in (namespace,
//! name, uid and generation of the resource being reconciled).

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Whether text logs are coloured: on a terminal, unless `NO_COLOR` says otherwise
/// (<https://no-color.org>: set and not empty).
pub fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The subscriber for `format`, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    colour: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(colour).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    }
}

/// What kube logs of each failed try, quieted: its client logs every 5xx and connection failure
/// at `error` (a 503 its retry then got through included), and its watcher every refused (403)
/// try of a watch at `warn`, every 2 s while RBAC stays wrong. The controller logs each failure
/// that reaches it itself, once and with what it was doing (a reconcile's; a watch's and the
/// Lease's the first time in a row and every tenth), so at a level without `debug` these are off.
const KUBE_PER_TRY: [&str; 2] = [
    "kube_client::client::builder=off",
    "kube_runtime::watcher=error",
];

/// The filter: `RUST_LOG` if set, else `level`; kube's per-try lines (see [`KUBE_PER_TRY`]) are
/// quieted unless `level` asks for `debug` or `trace` anywhere (kube's own `debug` lines share
/// their targets).
pub fn filter(
    level: &str,
    rust_log: Option<&str>,
) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    if let Some(env) = rust_log.filter(|env| !env.is_empty()) {
        return EnvFilter::try_new(env);
    }
    let filter = EnvFilter::try_new(level)?;
    if filter
        .max_level_hint()
        .is_some_and(|most| most >= tracing_subscriber::filter::LevelFilter::DEBUG)
    {
        return Ok(filter);
    }
    KUBE_PER_TRY.iter().try_fold(filter, |filter, quiet| {
        Ok(filter.add_directive(quiet.parse()?))
    })
}

/// Installs the global subscriber. Fails only if the filter does not parse.
pub fn init(format: LogFormat, level: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = filter(level, std::env::var("RUST_LOG").ok().as_deref())?;
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = tracing::subscriber::set_global_default(subscriber(
        format,
        filter,
        colour,
        std::io::stderr,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None), "a file or a pipe");
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, colour: bool) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = subscriber(format, EnvFilter::new("info"), colour, move || {
            buffer.clone()
        });
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "reconcile",
                namespace = "platform",
                resource = "prod-eu",
                uid = "8d7e0c55"
            );
            let _entered = span.enter();
            tracing::warn!(reason = "Throttled", "proton call failed");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// What `filter(level, rust_log)` lets through of an error at kube's per-request target, of
    /// a warning of kube's watcher, and of a warning of the controller's.
    fn passed_all(level: &str, rust_log: Option<&str>) -> (bool, bool, bool) {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let filter = filter(level, rust_log).unwrap();
        let subscriber = subscriber(LogFormat::Text, filter, false, move || buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "kube_client::client::builder", "failed with status 503");
            tracing::warn!(target: "kube_runtime::watcher", "watch initlist error with 403");
            tracing::warn!(target: "eac_controller::connection::controller", "reconcile failed");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (
            text.contains("failed with status 503"),
            text.contains("error with 403"),
            text.contains("reconcile failed"),
        )
    }

    /// [`passed_all`], kube's two kinds of line alike.
    fn passed(level: &str, rust_log: Option<&str>) -> (bool, bool) {
        let (client, watcher, ours) = passed_all(level, rust_log);
        assert_eq!(client, watcher, "{level} {rust_log:?}");
        (client, ours)
    }

    #[test]
    fn kubes_per_request_failures_are_off_unless_asked_for() {
        assert_eq!(passed("info", None), (false, true));
        assert_eq!(passed("warn", Some("")), (false, true), "an empty RUST_LOG");
        assert_eq!(passed("info,kube_client=debug", None), (true, true));
        assert_eq!(passed("debug", None), (true, true), "debugging shows all");
        assert_eq!(
            passed("info,kube_client::config=warn", None),
            (false, true),
            "another kube_client target named"
        );
        assert_eq!(passed("info", Some("info")), (true, true), "RUST_LOG wins");
    }

    #[test]
    fn text_and_json_carry_the_same_fields_and_text_to_a_file_has_no_escape_codes() {
        let text = logged(LogFormat::Text, false);
        let json = logged(LogFormat::Json, false);
        assert!(!text.contains('\x1b'), "{text:?}");
        let line: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        for (field, value) in [
            ("namespace", "platform"),
            ("resource", "prod-eu"),
            ("uid", "8d7e0c55"),
            ("reason", "Throttled"),
        ] {
            assert!(
                text.contains(&format!("{field}={value}"))
                    || text.contains(&format!("{field}=\"{value}\"")),
                "{field} in {text}"
            );
            let in_json = line
                .get(field)
                .or_else(|| line["span"].get(field))
                .and_then(|v| v.as_str());
            assert_eq!(in_json, Some(value), "{field} in {json}");
        }
        assert!(text.contains("proton call failed") && text.contains("WARN"));
        assert_eq!(line["message"], "proton call failed");
        assert_eq!(line["level"], "WARN");

        let coloured = logged(LogFormat::Text, true);
        assert!(coloured.contains('\x1b'), "a terminal gets colour");
    }
}
