//! One question to STS at a time (the caller's account, a role's credentials), its answer
//! shared: callers that arrive while it is asked wait for it and take its answer, a failure
//! included, rather than each asking again once it is over.
//!
//! An STS that drops packets holds a question for the whole call timeout, each retry included.
//! Had each waiter asked in turn, the k-th would wait k such timeouts, and every worker would
//! soon wait in this queue, those of resources with nothing to ask AWS included. So: while STS
//! does not answer and a question is out ([`Reach::refusing`]), a caller fails at once, unsent,
//! as the outage's; those already waiting take the failure of the question they waited for.

use std::future::Future;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::aws::error::{ErrorClass, ProtonError};
use crate::aws::reach::{self, Reach};

#[derive(Default)]
pub struct Asking {
    turn: tokio::sync::Mutex<()>,
    /// The last question's failure, and when it came.
    failed: Mutex<Option<(ProtonError, Instant)>>,
}

impl Asking {
    /// The answer: `fresh`'s while it has one, else `ask`'s (`operation` on STS), one question
    /// at a time.
    pub async fn ask<T, F>(
        &self,
        reach: &Reach,
        operation: &'static str,
        fresh: impl Fn() -> Option<T>,
        ask: impl FnOnce() -> F,
    ) -> Result<T, ProtonError>
    where
        F: Future<Output = Result<T, ProtonError>>,
    {
        if let Some(answer) = fresh() {
            return Ok(answer);
        }
        if let Some(unsent) = reach.refusing(reach::STS, operation) {
            return Err(unsent);
        }
        let arrived = Instant::now();
        let _turn = self.turn.lock().await;
        // Answered, or failed, while this caller waited: that was its question too. Unless it
        // failed for want of an answer and STS has answered since (a probe): then the failure
        // is the outage's, and this caller asks.
        if let Some(answer) = fresh() {
            return Ok(answer);
        }
        if let Some((failure, at)) = self.lock().clone()
            && at > arrived
            && (failure.class != ErrorClass::Unanswered || reach.is_away(reach::STS))
        {
            return Err(failure);
        }
        let _trial = reach.trial(reach::STS, operation)?;
        let answer = ask().await;
        if let Err(failure) = &answer {
            *self.lock() = Some((failure.clone(), Instant::now()));
        }
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(ProtonError, Instant)>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    fn timed_out() -> ProtonError {
        ProtonError {
            operation: "GetCallerIdentity",
            class: ErrorClass::Unanswered,
            code: "TimeoutError".into(),
            message: "no answer".into(),
            retry_in: None,
        }
    }

    /// STS drops packets: the callers waiting for the question out take its failure, not a
    /// turn each to time out again; once STS is known away, a caller fails at once, unsent,
    /// while the one question let through is out.
    #[tokio::test(start_paused = true)]
    async fn callers_share_one_question_and_its_failure() {
        let reach = Arc::new(Reach::default());
        let asking = Arc::new(Asking::default());
        let asked = Arc::new(AtomicU32::new(0));
        let timeout = Duration::from_secs(30);
        let start = Instant::now();
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (reach, asking, asked) = (reach.clone(), asking.clone(), asked.clone());
                tokio::spawn(async move {
                    asking
                        .ask(
                            &reach,
                            "GetCallerIdentity",
                            || None::<String>,
                            || async {
                                asked.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(timeout).await;
                                // As `Reach::observed` marks it, on the failure.
                                reach_away(&reach).await;
                                Err::<String, _>(timed_out())
                            },
                        )
                        .await
                })
            })
            .collect();
        for caller in callers {
            let failure = caller.await.unwrap().unwrap_err();
            assert_eq!(failure.code, "TimeoutError");
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one question for eight callers"
        );
        assert_eq!(start.elapsed(), timeout, "none waited for a second timeout");

        // STS known away, the one question let through out: the next caller fails at once,
        // unsent, rather than waiting for that question.
        let out = question_out(&reach, &asking, timeout).await;
        let before = Instant::now();
        let unsent = asking
            .ask(
                &reach,
                "GetCallerIdentity",
                || None::<String>,
                || async { panic!("not sent while another question is out") },
            )
            .await
            .unwrap_err();
        assert!(unsent.is_unreached(), "{unsent:?}");
        assert!(unsent.message.contains("STS"), "{}", unsent.message);
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert_eq!(out.await.unwrap().unwrap_err().code, "TimeoutError");
    }

    /// STS answers a probe while a question sent in its outage still waits: callers that queue
    /// behind that question ask again when it fails, not taking a failure that was the outage's.
    #[tokio::test(start_paused = true)]
    async fn a_failure_of_the_outage_is_not_shared_once_sts_answers() {
        let reach = Arc::new(Reach::default());
        let asking = Arc::new(Asking::default());
        reach_away(&reach).await;
        let out = question_out(&reach, &asking, Duration::from_secs(30)).await;
        let answered = async {
            Ok::<
                (),
                aws_sdk_sts::error::SdkError<
                    aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityError,
                    aws_smithy_runtime_api::http::Response,
                >,
            >(())
        };
        reach
            .observed(reach::STS, "GetCallerIdentity", true, answered)
            .await
            .unwrap();
        assert!(!reach.is_away(reach::STS), "the probe ended the outage");
        let after = asking
            .ask(
                &reach,
                "GetCallerIdentity",
                || None::<String>,
                || async { Ok("111122223333".to_string()) },
            )
            .await;
        assert_eq!(after.as_deref(), Ok("111122223333"), "asked again");
        assert!(out.await.unwrap().is_err());
    }

    /// A question sent while STS is away, that fails for want of an answer after `timeout`;
    /// returns once it holds STS's one turn.
    async fn question_out(
        reach: &Arc<Reach>,
        asking: &Arc<Asking>,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<String, ProtonError>> {
        let out = tokio::spawn({
            let (reach, asking) = (reach.clone(), asking.clone());
            async move {
                asking
                    .ask(
                        &reach,
                        "GetCallerIdentity",
                        || None::<String>,
                        || async {
                            tokio::time::sleep(timeout).await;
                            Err::<String, _>(timed_out())
                        },
                    )
                    .await
            }
        });
        while reach.refusing(reach::STS, "GetCallerIdentity").is_none() {
            tokio::task::yield_now().await;
        }
        out
    }

    /// Marks STS away as a call nothing answered does.
    async fn reach_away(reach: &Reach) {
        let call = async {
            Err::<(), _>(aws_sdk_sts::error::SdkError::<
                aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityError,
                aws_smithy_runtime_api::http::Response,
            >::timeout_error("no answer"))
        };
        let _ = reach
            .observed(reach::STS, "GetCallerIdentity", false, call)
            .await;
        assert!(reach.is_away(reach::STS));
    }
}
