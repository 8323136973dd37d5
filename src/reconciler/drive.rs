//! The reconcile loop, written once for every kind: the pure decision names the next step, the
//! kind's executor carries it out (one Kubernetes or AWS call), the decision folds the answer in;
//! again, until the step is final. A kind supplies its [`Decision`] and its [`Executor`]; the
//! final step is the caller's to act on (status, Events, requeue).

use std::future::Future;

use tracing::debug;

use super::note::Note;
use crate::aws::error::ProtonError;

/// A reconcile's pure side.
pub trait Decision {
    type Step: std::fmt::Debug;
    type Outcome;

    /// The one next step.
    fn next_step(&mut self, now: jiff::Timestamp) -> Self::Step;

    /// Whether the reconcile ends with this step.
    fn is_final(step: &Self::Step) -> bool;

    /// Folds the answer to `step` in; returns the Event the change deserves, if any.
    fn fold(
        &mut self,
        step: &Self::Step,
        answer: Result<Self::Outcome, ProtonError>,
    ) -> Option<Note>;
}

/// A reconcile's imperative side: carries one step out. `Err` ends the reconcile (a Kubernetes
/// failure, for the error policy); an AWS answer, errors included, goes back to the decision.
pub trait Executor<D: Decision> {
    type Error;

    fn execute(
        &mut self,
        decision: &D,
        step: &D::Step,
    ) -> impl Future<Output = Result<Result<D::Outcome, ProtonError>, Self::Error>> + Send;

    /// An Event the decision named; published when the reconcile is over.
    fn noted(&mut self, _note: Note) {}
}

/// Runs `decision` with `executor` until its step is final, and returns that step.
pub async fn drive<D, X>(decision: &mut D, executor: &mut X) -> Result<D::Step, X::Error>
where
    D: Decision,
    X: Executor<D>,
{
    loop {
        let step = decision.next_step(jiff::Timestamp::now());
        debug!(?step, "next step");
        if D::is_final(&step) {
            return Ok(step);
        }
        let answer = executor.execute(decision, &step).await?;
        if let Some(note) = decision.fold(&step, answer) {
            executor.noted(note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts to three through an executor that answers each step with its number.
    struct Count(u32);

    impl Decision for Count {
        type Step = Option<u32>;
        type Outcome = u32;
        fn next_step(&mut self, _now: jiff::Timestamp) -> Option<u32> {
            (self.0 < 3).then_some(self.0 + 1)
        }
        fn is_final(step: &Option<u32>) -> bool {
            step.is_none()
        }
        fn fold(&mut self, _step: &Option<u32>, answer: Result<u32, ProtonError>) -> Option<Note> {
            self.0 = answer.unwrap_or(self.0);
            (self.0 == 2).then(|| Note::normal("Two", "reached two"))
        }
    }

    #[derive(Default)]
    struct Answer {
        calls: Vec<u32>,
        notes: Vec<Note>,
    }

    impl Executor<Count> for Answer {
        type Error = ();
        async fn execute(
            &mut self,
            _decision: &Count,
            step: &Option<u32>,
        ) -> Result<Result<u32, ProtonError>, ()> {
            let n = step.unwrap_or_default();
            self.calls.push(n);
            Ok(Ok(n))
        }
        fn noted(&mut self, note: Note) {
            self.notes.push(note);
        }
    }

    #[tokio::test]
    async fn the_loop_executes_each_step_folds_its_answer_and_stops_on_a_final_one() {
        let (mut count, mut answer) = (Count(0), Answer::default());
        assert_eq!(drive(&mut count, &mut answer).await, Ok(None));
        assert_eq!(answer.calls, [1, 2, 3]);
        assert_eq!(answer.notes, [Note::normal("Two", "reached two")]);
    }
}
