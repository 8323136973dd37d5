//! What an answer means: folds the raw result of each step into [`Observed`].
//!
//! This is where the controller's interpretations live, in one place: a NotFound on the recorded
//! connection means it vanished (but on the adopt annotation's id, that there is nothing to
//! adopt); a Create that may be a replay of an earlier one says nothing about the tags; a
//! ConflictException from Create means "look for our own connection" first; an error anything
//! else means the reconcile ends on that problem.

use crate::aws::proton::{CREATE, Connection, ErrorClass, Owned, ProtonError, Tags};
use crate::connection::api::EnvironmentAccountConnectionStatus as Status;

use super::events::{self, Note};
use super::{Outcome, Problem, Run, Step};

/// How the connection in [`Observed::Connection`] came to be known in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read back with the id recorded in the status.
    Recorded,
    /// Returned by Create; `recreation` 0 is the first connection of the resource.
    Created { recreation: u32 },
    /// Read with the id of the adopt annotation.
    Adopted,
    /// Found by listing the environment's connections and matching the uid tag.
    Found,
    /// Listed as the environment's connection to observe: a List summary (it lacks the
    /// CodeBuild role), read in full before it is reported.
    Listed,
}

impl Origin {
    /// The re-creation count to record with the connection.
    pub fn recreations(self, status: &Status) -> u32 {
        match self {
            Origin::Created { recreation } => recreation,
            _ => status.recreations,
        }
    }
}

/// What Proton has reported so far in this reconcile.
// One value lives per reconcile; boxing the connection would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Nothing asked yet.
    Nothing,
    Connection {
        connection: Connection,
        /// The connection's tags, once listed (or as just sent with a first Create).
        tags: Option<Tags>,
        origin: Origin,
    },
    /// The connection looked up does not exist: `id` is the id asked for (None: a search by
    /// environment and uid tag found nothing).
    Gone { id: Option<String> },
    /// Create answered ConflictException: our own connection may exist already (the token was
    /// used with other parameters), or another connection holds the environment.
    CreateConflict,
    /// On deletion: the connection was deleted, or retained and released.
    Released,
}

/// What a reconcile whose next AWS call was deferred had learned, for the next reconcile of the
/// resource to go on from: without it, that reconcile would spend its booked slot reading the
/// connection again and be deferred once more on the same call, for ever while the budget is
/// busy.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// A connection read (with its tags, if they were listed), or the recorded one found gone.
    pub observed: Observed,
    /// The account the credentials act as.
    pub account: Option<String>,
    /// The namespace's adoption opt-in, if it was read.
    pub adoption_allowed: Option<bool>,
    /// The refusal of a replayed Create, with [`Observed::CreateConflict`]: the next reconcile
    /// searches for its connection instead of sending the Create again. Sent again, it would
    /// spend the slot booked for the search, be refused again, and the search would be deferred
    /// again, for as long as the budget stays busy.
    pub conflict: Option<ProtonError>,
}

impl Progress {
    /// Whether an observation is worth carrying over: a connection, the recorded one gone (an
    /// id never comes back), or a replayed Create refused (the search for its connection
    /// follows). Not a search that found nothing (List is eventually consistent), or a release
    /// (nothing follows it).
    pub(super) fn keeps(observed: &Observed) -> bool {
        matches!(
            observed,
            Observed::Connection { .. } | Observed::Gone { id: Some(_) } | Observed::CreateConflict
        )
    }
}

pub(super) fn record(
    run: &mut Run,
    step: &Step,
    result: Result<Outcome, ProtonError>,
) -> Option<Note> {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            failed(run, step, e);
            return None;
        }
    };
    let note = events::event_for(step, &outcome);
    match (step, outcome) {
        (Step::AddFinalizer { intent }, outcome) => {
            run.has_finalizer = true;
            if let (Some(intent), Outcome::IntentRecorded) = (intent, outcome) {
                intent.apply(&mut run.status);
            }
        }
        (Step::Record(recorded), _) => {
            run.status = recorded.status.clone();
            // What was observed before the write (a vanished connection) is settled by it.
            run.observed = Observed::Nothing;
        }
        (Step::ReadAdoptionPolicy, Outcome::AdoptionAllowed(allowed)) => {
            run.adoption_allowed = Some(allowed)
        }
        (Step::WhoAmI, Outcome::Account(account)) => run.account = Some(account),
        (Step::Get { id }, Outcome::Connection(connection)) => {
            let origin = if run.status.id.as_deref() == Some(id.as_str()) {
                Origin::Recorded
            } else {
                Origin::Adopted
            };
            run.observed = Observed::Connection {
                connection,
                tags: None,
                origin,
            };
        }
        (
            Step::Create {
                request,
                recreation,
                replay,
                ..
            },
            Outcome::Connection(connection),
        ) => {
            run.observed = Observed::Connection {
                connection,
                // A replayed token returns the connection as it was first created, whatever was
                // sent now: its tags must be read, not assumed.
                tags: (!replay).then(|| request.tags.clone()),
                origin: Origin::Created {
                    recreation: *recreation,
                },
            };
        }
        (Step::Update { .. }, Outcome::Connection(connection)) => {
            let (tags, origin) = match &run.observed {
                Observed::Connection { tags, origin, .. } => (tags.clone(), *origin),
                _ => (None, Origin::Recorded),
            };
            run.observed = Observed::Connection {
                connection,
                tags,
                origin,
            };
        }
        (Step::FindOwned { .. }, Outcome::Found(found)) => {
            run.observed = match found {
                Owned::Found(connection, tags) => Observed::Connection {
                    connection,
                    tags: Some(tags),
                    origin: Origin::Found,
                },
                Owned::Namesake(namesake) => {
                    run.namesake = Some(namesake);
                    Observed::Gone { id: None }
                }
                Owned::Nothing => Observed::Gone { id: None },
            };
        }
        (Step::Lookup { .. }, Outcome::Listed(listed)) => {
            run.observed = match pick_observed(listed) {
                Some(connection) => Observed::Connection {
                    connection,
                    tags: None,
                    origin: Origin::Listed,
                },
                None => Observed::Gone { id: None },
            };
        }
        (Step::ListTags { .. }, Outcome::Tags(tags)) => set_tags(run, |t| *t = tags),
        (Step::Tag { tags, .. }, _) => set_tags(run, |t| t.extend(tags.clone())),
        (Step::Untag { retain: true, .. }, _) | (Step::Delete { .. }, _) => {
            run.observed = Observed::Released;
        }
        (Step::Untag { keys, .. }, _) => set_tags(run, |t| t.retain(|k, _| !keys.contains(k))),
        (step, outcome) => {
            // The executor answered a step with the wrong kind of outcome: a bug, reported on
            // the resource rather than trusted.
            run.problem = Some(Problem {
                reason: "InternalError",
                message: format!(
                    "unexpected answer to {}: {outcome:?}; retrying",
                    step.name()
                ),
                retry: crate::aws::proton::Retry::Backoff,
            });
            return None;
        }
    }
    note
}

/// Of the environment's connections to the management account, the one an observer follows: a
/// live one (PENDING or CONNECTED) before a REJECTED one that stays as a record, then the most
/// recently requested.
fn pick_observed(listed: Vec<Connection>) -> Option<Connection> {
    listed.into_iter().max_by(|a, b| {
        let live = |c: &Connection| c.state != crate::connection::api::ConnectionState::Rejected;
        live(a)
            .cmp(&live(b))
            .then_with(|| a.requested_at.cmp(&b.requested_at))
            .then_with(|| a.id.cmp(&b.id))
    })
}

fn set_tags(run: &mut Run, change: impl FnOnce(&mut Tags)) {
    if let Observed::Connection { tags, .. } = &mut run.observed {
        let mut now = tags.take().unwrap_or_default();
        change(&mut now);
        *tags = Some(now);
    }
}

/// A step failed: decide what the failure means.
fn failed(run: &mut Run, step: &Step, e: ProtonError) {
    if e.is_late() && matches!(step, Step::Create { .. }) {
        // Not sent, and its intent is too old to send it under: the run writes the intent again
        // and sends the Create anew.
        run.sent.retain(|sent| sent != step);
        return;
    }
    if e.class == ErrorClass::Deferred {
        // Not sent: the budget had no room. Nothing is learned; the resource comes back.
        run.deferred = Some((run.class_of(step), e.retry_in));
        return;
    }
    match (step, e.class) {
        // The recorded (or adopted, or just found) connection does not exist.
        (
            Step::Get { .. }
            | Step::Update { .. }
            | Step::ListTags { .. }
            | Step::Tag { .. }
            | Step::Untag { .. }
            | Step::Delete { .. },
            ErrorClass::NotFound,
        ) => {
            run.observed = Observed::Gone {
                id: target_id(step, &run.observed, &run.status),
            };
        }
        (
            Step::Create {
                replay, recreation, ..
            },
            class,
        ) => {
            // A Create refused outright created nothing, nor did one never sent (its
            // credentials could not be had: the mapped role's AssumeRole failed, even for a
            // passing fault), nor one refused because the credentials that signed it expired
            // (retried like a passing fault), nor one not sent as its region does not answer:
            // the record that a Create may be in flight goes back to what it was before this
            // reconcile (none for a first attempt, else the last Create whose answer never
            // came), so neither deletion nor a conflict waits for this one.
            //
            // Unless this was the first attempt to re-create a recorded connection answered
            // NotFound: that one may exist still (a NotFound that was not true, from an
            // endpoint or a proxy), so the record stays, and a deletion searches for it before
            // it lets the resource go, until a search settles it.
            let keep_record = *recreation > 0
                && run.r.status.create_sent_at.is_none()
                && run.r.status.id.is_some();
            // A Conflict on a Create that is neither a replay nor the first attempt to re-create
            // a recorded connection only looks for a namesake's connection to name in the
            // report: once per generation, since retrying it at the resync period, each time
            // with a List and a ListTags per connection listed, would tell nothing new.
            let told = (!*replay && !keep_record)
                .then(|| namesake_told(run))
                .flatten();
            let search = run.conflict.is_none()
                && e.operation == CREATE
                && !e.failed_in_client()
                && !e.is_unreached()
                && may_hide_our_own(class, *replay)
                && told.is_none();
            if (creates_nothing(&e)
                || e.operation != CREATE
                || e.code.starts_with("ExpiredToken")
                || e.is_unreached())
                && !keep_record
            {
                run.status.create_sent_at = run.r.status.create_sent_at.clone();
            }
            if search {
                run.conflict = Some(e);
                run.observed = Observed::CreateConflict;
            } else {
                let mut problem = Problem::from(&e);
                if let Some(told) = told.filter(|_| class == ErrorClass::Conflict) {
                    problem.message = told;
                }
                run.problem = Some(problem);
            }
        }
        _ => run.problem = Some(Problem::from(&e)),
    }
}

/// The report of a Conflict on a first Create already made for this generation (Synced False,
/// reason Conflict), whose message (naming a namesake's connection, if a search found one) stands.
fn namesake_told(run: &Run) -> Option<String> {
    run.r
        .status
        .condition(crate::conditions::SYNCED)
        .filter(|c| {
            c.status == "False"
                && c.reason == ErrorClass::Conflict.reason()
                && c.observed_generation == Some(run.r.generation)
        })
        .map(|c| c.message.clone())
}

/// Whether a refused Create is followed by a search of the environment's connections for this
/// resource's own (by its uid tag) before anything is reported:
/// - a replay (a Create with this token was sent before): our connection may exist under it
///   with other parameters (a crash, then a spec edit). Endpoints refuse a token reused with
///   other parameters differently: a Conflict, a ValidationException, or a code of their own
///   (`IdempotentParameterMismatch`), so any of these;
/// - a re-creation after the recorded connection was answered NotFound, refused with a
///   Conflict: the recorded one may hold the environment still (a NotFound that was not true,
///   from an endpoint or a proxy), and without the search it would be forgotten, and never
///   deleted with the resource;
/// - any other Create refused with a Conflict: nothing of this resource's can exist, but the
///   search names a connection of a resource of the same namespace and name (its cluster
///   rebuilt from Git, or a restore without the status), which the report then points to.
fn may_hide_our_own(class: ErrorClass, replay: bool) -> bool {
    match class {
        ErrorClass::Conflict => true,
        ErrorClass::Validation | ErrorClass::Unsupported | ErrorClass::Other => replay,
        _ => false,
    }
}

/// Whether an error answer to a Create proves that it created nothing.
fn creates_nothing(e: &ProtonError) -> bool {
    match e.class {
        ErrorClass::Throttled
        | ErrorClass::AccessDenied
        | ErrorClass::Validation
        | ErrorClass::QuotaExceeded
        | ErrorClass::Conflict
        | ErrorClass::Deferred => true,
        ErrorClass::Unsupported => e.refused_unrouted(),
        ErrorClass::Transient
        | ErrorClass::Unanswered
        | ErrorClass::NotFound
        | ErrorClass::Other => false,
    }
}

/// The id a failed step was about, to tell "the recorded connection vanished" apart.
fn target_id(step: &Step, observed: &Observed, status: &Status) -> Option<String> {
    match step {
        Step::Get { id } | Step::Update { id, .. } | Step::Delete { id } => Some(id.clone()),
        Step::ListTags { .. } | Step::Tag { .. } | Step::Untag { .. } => match observed {
            Observed::Connection { connection, .. } => Some(connection.id.clone()),
            _ => status.id.clone(),
        },
        _ => None,
    }
}
