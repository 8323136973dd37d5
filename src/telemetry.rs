//! Logging: `tracing` as text or JSON; the level from `--log-level`, overridden by `RUST_LOG`.
//!
//! Text is coloured only when it goes to a terminal and `NO_COLOR` is unset (or empty), so a log
//! written to a file or a pipe carries no escape codes for `grep` or a log shipper to trip on.
//! Text and JSON carry the same fields: the event's, and those of the spans it is in (namespace,
//! name, uid and generation of the resource being reconciled).

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
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
/// try of a watch at `warn`, every 2 s or so while RBAC stays wrong. The controller logs each
/// failure that reaches it itself, once and with what it was doing (a reconcile's; a watch's and
/// the Lease's the first time in a row and every tenth), so at a level without `debug` these are
/// quieted to this, unless the level names their target (or a prefix of it) itself.
const KUBE_PER_TRY: [(&str, LevelFilter); 2] = [
    ("kube_client::client::builder", LevelFilter::OFF),
    ("kube_runtime::watcher", LevelFilter::ERROR),
];

/// The filter: `RUST_LOG` if set, else `level`; kube's per-try lines (see [`KUBE_PER_TRY`]) are
/// quieted unless `level` asks for `debug` or `trace` anywhere (kube's own `debug` lines share
/// their targets) or names their targets.
pub fn filter(
    level: &str,
    rust_log: Option<&str>,
) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    if let Some(env) = rust_log.filter(|env| !env.is_empty()) {
        return EnvFilter::try_new(env);
    }
    let filter = EnvFilter::try_new(level)?;
    let most = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    if most >= LevelFilter::DEBUG {
        return Ok(filter);
    }
    let named = named_targets(level);
    KUBE_PER_TRY
        .iter()
        // Never louder than asked (`--log-level off`), never over what the level says of them.
        .filter(|(target, quiet)| *quiet < most && !named.iter().any(|n| target.starts_with(n)))
        .try_fold(filter, |filter, (target, quiet)| {
            Ok(filter.add_directive(format!("{target}={quiet}").parse()?))
        })
}

/// The targets the directives of `level` name (`target=level`, `target[span]=level`).
fn named_targets(level: &str) -> Vec<&str> {
    level
        .split(',')
        .map(str::trim)
        .filter(|d| d.contains('='))
        .map(|d| &d[..d.find(['[', '=']).unwrap_or(d.len())])
        .filter(|t| !t.is_empty())
        .collect()
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

    #[test]
    fn kubes_per_try_lines_are_quieted_unless_asked_for() {
        // (kube's client's error, kube's watcher's warning, the controller's warning)
        assert_eq!(passed_all("info", None), (false, false, true));
        assert_eq!(
            passed_all("warn", Some("")),
            (false, false, true),
            "empty RUST_LOG"
        );
        assert_eq!(passed_all("error", None), (false, false, false));
        assert_eq!(
            passed_all("off", None),
            (false, false, false),
            "never louder"
        );
        assert_eq!(passed_all("debug", None), (true, true, true), "debugging");
        assert_eq!(
            passed_all("info,kube_client=debug", None),
            (true, true, true)
        );
        assert_eq!(
            passed_all("info", Some("info")),
            (true, true, true),
            "RUST_LOG wins"
        );
        assert_eq!(
            passed_all("info,kube_runtime::watcher=warn", None),
            (false, true, true),
            "a level that names the target is kept"
        );
        assert_eq!(
            passed_all("info,kube_client=error", None),
            (true, false, true),
            "a prefix of the target named"
        );
        assert_eq!(
            passed_all("info,kube_client::config=warn", None),
            (false, false, true),
            "another of kube's targets named"
        );
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
