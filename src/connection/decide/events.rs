//! The text of Kubernetes Events: one per transition, named after what happened.

use super::{Outcome, Step};

pub use crate::reconciler::note::Note;

/// The Event announcing a Proton change that succeeded, if it deserves one.
pub fn event_for(step: &Step, outcome: &Outcome) -> Option<Note> {
    let id = match outcome {
        Outcome::Connection(c) => c.id.as_str(),
        _ => "",
    };
    match step {
        Step::Create {
            recreation: 0,
            region,
            ..
        } => Some(Note::normal(
            "Created",
            format!("created connection {id} in {region}"),
        )),
        Step::Create {
            recreation, region, ..
        } => Some(Note::normal(
            "Recreated",
            format!(
                "re-created connection as {id} in {region} (re-creation {recreation}) after it was deleted outside the controller"
            ),
        )),
        Step::Update { id, roles } => Some(Note::normal(
            "Updated",
            format!(
                "updated the role ARNs of connection {id}: roleArn={}, codebuildRoleArn={}, componentRoleArn={}",
                roles.role_arn.as_deref().unwrap_or("-"),
                roles.codebuild_role_arn.as_deref().unwrap_or("-"),
                roles.component_role_arn.as_deref().unwrap_or("-"),
            ),
        )),
        Step::Tag { tags, .. } => Some(Note::normal(
            "TagsUpdated",
            format!(
                "tagged connection with {}",
                tags.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
        Step::Untag {
            keys,
            retain: false,
            ..
        } => Some(Note::normal(
            "TagsUpdated",
            format!("untagged {} from the connection", keys.join(", ")),
        )),
        Step::Untag {
            arn, retain: true, ..
        } => Some(Note::normal(
            "Retained",
            format!(
                "kept connection {arn} in Proton (deletionPolicy: Retain) and removed the ownership tags"
            ),
        )),
        Step::Delete { id } => Some(Note::normal("Deleted", format!("deleted connection {id}"))),
        _ => None,
    }
}

/// The Event for a recorded connection that no longer exists.
pub fn vanished(id: &str) -> Note {
    Note::warning(
        "NotFound",
        format!(
            "connection {id} no longer exists in Proton (deleted outside the controller); re-creating it"
        ),
    )
}

/// The Event for a state Proton reports for the first time.
pub fn state_change(
    before: Option<crate::connection::api::ConnectionState>,
    c: &crate::aws::proton::Connection,
) -> Option<Note> {
    use crate::connection::api::ConnectionState;
    if before == Some(c.state) {
        return None;
    }
    match c.state {
        ConnectionState::Connected => Some(Note::normal(
            "Connected",
            format!("connection {} is CONNECTED", c.id),
        )),
        ConnectionState::Rejected => Some(Note::warning(
            "Rejected",
            format!(
                "management account {} rejected connection {}",
                c.management_account_id, c.id
            ),
        )),
        ConnectionState::Pending => None,
    }
}
