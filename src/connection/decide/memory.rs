//! What the controller keeps about a resource between reconciles, and the status it reconciles
//! from.
//!
//! The resource's status in the watch cache can be behind: the controller's own last write may
//! not have come back through the watch yet, or the write failed. Reconciling from it would
//! repeat work or, worse, Create a connection that is already known. So the controller keeps its
//! last successful write (the cache catches up with it) and the status of a reconcile whose
//! write failed (the connection it learned about must not be forgotten), and reconciles from
//! their combination. A failed write is never taken as durable: the record that a Create may be
//! in flight (`createSentAt`) counts only once it is really written.

use serde::{Deserialize, Serialize};

use crate::connection::api::EnvironmentAccountConnectionStatus as Status;

/// The intent to create written with the finalizer (annotation `proton.eac.dev/create-intent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub region: String,
    pub account: String,
    /// RFC 3339.
    pub sent_at: String,
}

impl Intent {
    /// Parses the annotation; anything unreadable is ignored (the status still counts).
    pub fn parse(annotation: &str) -> Option<Intent> {
        serde_json::from_str(annotation).ok()
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Writes the intent into a status that has no connection recorded: the pins where the
    /// status has none, and the later of the two times a Create may have been sent.
    pub fn apply(&self, status: &mut Status) {
        if status.id.is_some() {
            return;
        }
        status.region.get_or_insert_with(|| self.region.clone());
        status
            .environment_account_id
            .get_or_insert_with(|| self.account.clone());
        let later = match &status.create_sent_at {
            Some(t) => later_of(t, &self.sent_at),
            None => self.sent_at.clone(),
        };
        status.create_sent_at = Some(later);
    }
}

fn later_of(a: &str, b: &str) -> String {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(x), Ok(y)) if y > x => b.to_string(),
        (Err(_), Ok(_)) => b.to_string(),
        _ => a.to_string(),
    }
}

/// Kept per resource while it is in the watch cache (dropped when it leaves, or when this
/// controller loses the lease).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// The last status this controller wrote successfully.
    pub written: Option<Box<Status>>,
    /// The status of a reconcile whose write failed.
    pub unwritten: Option<Box<Status>>,
}

impl Memory {
    /// Forgets what the cached status has caught up with. Returns whether anything is left.
    pub fn catch_up(&mut self, stored: Option<&Status>) -> bool {
        if self.written.as_deref() == stored && stored.is_some() {
            self.written = None;
        }
        if let Some(u) = &self.unwritten
            && (u.id.is_none() || stored.and_then(|s| s.id.as_ref()) == u.id.as_ref())
        {
            self.unwritten = None;
        }
        self.written.is_some() || self.unwritten.is_some()
    }
}

/// The status to reconcile from: the last write if the cache has not caught up with it, plus
/// the intent to create written with the finalizer, plus the connection a reconcile learned
/// about but could not record.
pub fn effective_status(
    stored: Option<&Status>,
    intent: Option<&Intent>,
    memory: &Memory,
) -> Status {
    let mut status = match &memory.written {
        Some(written) => Status::clone(written),
        None => stored.cloned().unwrap_or_default(),
    };
    if let Some(intent) = intent {
        intent.apply(&mut status);
    }
    if let Some(learned) = &memory.unwritten
        && learned.id.is_some()
        && learned.id != status.id
    {
        status.id = learned.id.clone();
        status.arn = learned.arn.clone();
        status.status = learned.status;
        status.region = learned.region.clone();
        status.environment_account_id = learned.environment_account_id.clone();
        status.requested_at = learned.requested_at.clone();
        status.last_modified_at = learned.last_modified_at.clone();
        status.role_arn = learned.role_arn.clone();
        status.codebuild_role_arn = learned.codebuild_role_arn.clone();
        status.component_role_arn = learned.component_role_arn.clone();
        status.recreations = learned.recreations;
        for key in &learned.applied_tag_keys {
            if !status.applied_tag_keys.contains(key) {
                status.applied_tag_keys.push(key.clone());
            }
        }
        status.applied_tag_keys.sort();
    }
    status
}
