//! Decisions batched per connection: a call made while another of the same script is on its way
//! to Redis joins a queue, and a task sends what the queue holds as one call of the script's batch
//! form (`batch.lua`), which decides each in turn and answers each as the script alone would. The
//! task runs as soon as the runtime gets to it (after the tasks ready now, whose calls join the
//! same batch), and does not wait for the calls already on their way: batches are pipelined.
//!
//! Redis runs one command at a time, and a short script's command costs it more than the script's
//! own work: parsing the command, finding the script, starting it, making its `KEYS` and `ARGV`,
//! writing the reply. Measured with `redis-benchmark` against a private `redis-server` (2 vCPUs,
//! client and server on the same machine; 2026-12-07), one GCRA decision per `EVALSHA` at 64 in
//! flight made 62,000-69,000 decisions a second, throttle-kit's script 73,000-83,000, and the same
//! decisions 16 to a batch at 4 batches in flight 133,000-138,000 (4 to a batch at 16 in flight,
//! 110,000). A lone call (nothing else on its way) goes out at once, as before.
//!
//! What each decision keeps:
//! - its deadline: a batch carries each decision's own bound on Redis's clock, so a decision
//!   whose caller gave up is not written however late Redis runs the batch, and the caller's own
//!   timer answers it on time whatever the batch does;
//! - its answer and its error: a decision whose key holds unreadable data, or whose write Redis
//!   refuses, answers that error, and the batch's other decisions are made all the same;
//! - cancellation: a caller that goes away before its batch is sent is left out of it.
//!
//! A cluster's decisions are not batched (a script's keys must share a slot), nor are those made
//! outside a tokio runtime. A queued call whose batch is lost (its task dropped with its runtime)
//! answers an error for the failure policy, and is not sent again: it may have reached Redis.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{ErrorKind as RedisErrorKind, RedisError, ServerErrorKind, Value};
use tokio::sync::oneshot;

use super::deadline::Late;
use super::{Conn, Handle, LATE, Script, deadline};
use crate::backend::{BackendError, ErrorKind};
use crate::clock::{Clock, Nanos, duration_to_nanos};

/// The most decisions one batch carries (more go as further batches at once): Redis runs a batch
/// as one command, blocking its other clients meanwhile (at about 5 us a decision of one limit,
/// some 80 us for 16). In the `redis_rate_limit` criterion group, batches of 16 and of 64 made the
/// same decisions per second at 64 in flight (87,153 and 88,689 a second, 2026-12-07).
pub(crate) const MAX_BATCH: usize = 16;

/// A script's single and batch forms and the calls of it waiting to be batched, on one connection.
pub(crate) struct Batcher {
    single: &'static Script,
    batch: &'static Script,
    /// False: every call goes alone (`RedisBackend::batch_decisions(false)`).
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Calls and batches on their way to Redis.
    in_flight: usize,
    queue: Vec<Queued>,
    /// Whether a task to send the queue is spawned and has not taken it yet.
    scheduled: bool,
}

/// A decision waiting for its batch.
struct Queued {
    key: Vec<u8>,
    /// The script's arguments but the last (the deadline, added when the batch is sent).
    args: Vec<Vec<u8>>,
    /// When its caller gives up, on the connection's clock and on tokio's.
    gives_up_at: Nanos,
    due: tokio::time::Instant,
    answer: oneshot::Sender<Answer>,
}

/// A decision's answer (the script's array without the `TIME` it ends with, or its error) and the
/// generation of the connection it went on.
type Answer = (Result<Value, RedisError>, u64);

impl Batcher {
    /// A batcher for the calls of `single`, whose batch form is `batch` (every call alone unless
    /// `enabled`).
    pub(crate) fn new(single: &'static Script, batch: &'static Script, enabled: bool) -> Arc<Self> {
        Arc::new(Self {
            single,
            batch,
            enabled,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call or batch on its way: the count goes down when dropped (the call's end, or its caller or
/// task going away, before it ran included).
struct InFlight<B: std::ops::Deref<Target = Batcher>>(B);

impl<B: std::ops::Deref<Target = Batcher>> Drop for InFlight<B> {
    fn drop(&mut self) {
        self.0.state().in_flight -= 1;
    }
}

/// The task that sends the queue, from its spawning until it takes the queue: dropped before (its
/// runtime shut down before it ran), it unschedules itself and drops the queue (its callers answer
/// an error), so that the next call schedules a task again.
struct Scheduled {
    conn: Arc<Conn>,
    batcher: Arc<Batcher>,
    taken: bool,
}

impl Drop for Scheduled {
    fn drop(&mut self) {
        if !self.taken {
            let mut state = self.batcher.state();
            state.scheduled = false;
            state.queue.clear();
        }
    }
}

/// Sends the queue as batches of up to [`MAX_BATCH`], all at once.
async fn send_queue(mut scheduled: Scheduled) {
    let batches: Vec<Vec<Queued>> = {
        let mut state = scheduled.batcher.state();
        state.scheduled = false;
        scheduled.taken = true;
        state.queue.retain(|q| !q.answer.is_closed());
        let mut batches = Vec::with_capacity(state.queue.len().div_ceil(MAX_BATCH));
        while !state.queue.is_empty() {
            let n = state.queue.len().min(MAX_BATCH);
            batches.push(state.queue.drain(..n).collect());
        }
        state.in_flight += batches.len();
        batches
    };
    let (conn, batcher) = (&scheduled.conn, &scheduled.batcher);
    let mut batches = batches.into_iter();
    // The first goes first (its command is queued on the connection before the others'), each
    // after it on a task of its own, so that all go at once and in order.
    let first = batches.next();
    for batch in batches {
        tokio::spawn(send_one(
            Arc::clone(conn),
            InFlight(Arc::clone(batcher)),
            batch,
        ));
    }
    if let Some(batch) = first {
        let _in_flight = InFlight(&**batcher);
        conn.send_batch(batcher, batch).await;
    }
}

/// Sends one batch, counted in flight by `in_flight` until it ends.
async fn send_one(conn: Arc<Conn>, in_flight: InFlight<Arc<Batcher>>, batch: Vec<Queued>) {
    conn.send_batch(&in_flight.0, batch).await;
}

impl Conn {
    /// Runs `batcher`'s script on `key` with `args` as
    /// [`eval_before_deadline`](Self::eval_before_deadline) does (fenced by the caller's deadline,
    /// the `TIME` taken off the reply, the outcome recorded), in a batch with other callers' when
    /// a call of the script is already on its way (see the module documentation).
    pub(crate) async fn eval_batched(
        &self,
        batcher: &Arc<Batcher>,
        key: &[u8],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, BackendError> {
        let start = tokio::time::Instant::now();
        let started = self.clock.at(start);
        let due = deadline(start, timeout);
        let runtime = tokio::runtime::Handle::try_current();
        let (waiting, schedule) = {
            let mut state = batcher.state();
            let alone = (state.in_flight == 0 && state.queue.is_empty())
                || !batcher.enabled
                || runtime.is_err()
                || !matches!(self.line().handle, Handle::Single(_));
            if alone {
                state.in_flight += 1;
                (None, false)
            } else {
                let (answer, waiting) = oneshot::channel();
                state.queue.push(Queued {
                    key: key.to_vec(),
                    args: args.iter().map(|a| a.to_vec()).collect(),
                    gives_up_at: started.saturating_add(duration_to_nanos(timeout)),
                    due,
                    answer,
                });
                let schedule = !state.scheduled;
                state.scheduled = true;
                (Some(waiting), schedule)
            }
        };
        if schedule {
            match (&runtime, self.me.upgrade()) {
                (Ok(runtime), Some(conn)) => {
                    runtime.spawn(send_queue(Scheduled {
                        conn,
                        batcher: Arc::clone(batcher),
                        taken: false,
                    }));
                }
                // No task to send it (the connection is being dropped): the queue's callers,
                // their answers dropped, answer an error.
                _ => {
                    let mut state = batcher.state();
                    state.scheduled = false;
                    state.queue.clear();
                }
            }
        }
        let Some(waiting) = waiting else {
            let in_flight = InFlight(&**batcher);
            let (result, generation) = self
                .fenced(batcher.single, &[key], args, start, started, timeout)
                .await;
            drop(in_flight);
            self.took(started);
            return self.finish(result, timeout, generation);
        };
        let generation = self.line().generation;
        let (result, generation) = match deadline::until(due, waiting).await {
            Ok(Ok((Err(e), _))) if e.code() == Some(LATE) => {
                // Run after its deadline by the estimate of Redis's clock, yet answered in time:
                // the estimate is corrected (`send_batch`), and the call goes again, alone.
                self.fenced(batcher.single, &[key], args, start, started, timeout)
                    .await
            }
            Ok(Ok((result, generation))) => (Ok(result), generation),
            // The batch gave up at the latest deadline of its decisions, this caller's: late.
            Ok(Err(_)) if tokio::time::Instant::now() >= due => (Err(Late), generation),
            // The batch was lost (its task dropped with its runtime): it may have reached Redis,
            // so it is not sent again.
            Ok(Err(_)) => {
                self.took(started);
                return Err(BackendError::with_kind(
                    ErrorKind::Other,
                    "the batch carrying this redis call was dropped (its runtime shut down?)",
                    None,
                ));
            }
            Err(Late) => (Err(Late), generation),
        };
        self.took(started);
        self.finish(result, timeout, generation)
    }

    /// Sends `batch` as one call of `batcher`'s batch form, each decision bounded by its own
    /// deadline, and answers each caller.
    async fn send_batch(&self, batcher: &Batcher, batch: Vec<Queued>) {
        let (mut handle, generation) = self.current();
        // Each decision's arguments after their count, its deadline (`""` until a reply has told
        // how Redis's clock relates to ours) last.
        let mut counts = Vec::with_capacity(batch.len());
        let mut bounds = Vec::with_capacity(batch.len());
        for q in &batch {
            counts.push(itoa::Buffer::new().format(q.args.len() + 1).to_owned());
            bounds.push(
                self.redis_clock
                    .redis_us_at(q.gives_up_at)
                    .map(|us| itoa::Buffer::new().format(us).to_owned())
                    .unwrap_or_default(),
            );
        }
        let keys: Vec<&[u8]> = batch.iter().map(|q| q.key.as_slice()).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(batch.iter().map(|q| q.args.len() + 2).sum());
        for ((q, count), bound) in batch.iter().zip(&counts).zip(&bounds) {
            args.push(count.as_bytes());
            args.extend(q.args.iter().map(Vec::as_slice));
            args.push(bound.as_bytes());
        }
        // No caller waits past the latest deadline.
        let due = batch
            .iter()
            .map(|q| q.due)
            .max()
            .expect("a batch is never empty");
        let script = batcher.batch;
        let call = async {
            let sha = script.cmd("EVALSHA", &script.sha, &keys, &args, None);
            match handle.query_raw(&sha).await {
                Ok(Value::ServerError(e))
                    if RedisError::from(e.clone()).kind()
                        == RedisErrorKind::Server(ServerErrorKind::NoScript) =>
                {
                    tracing::debug!(sha = %script.sha, "redis script cache is empty; sending the script");
                    let eval = script.cmd("EVAL", &script.code, &keys, &args, None);
                    handle.query_raw(&eval).await
                }
                other => other,
            }
        };
        let reply = deadline::until(due, call).await;
        let received = self.clock.now();
        match reply {
            Ok(Ok(Value::Array(answers))) if answers.len() == batch.len() => {
                for (q, answer) in batch.into_iter().zip(answers) {
                    let answer = self.answer(answer, received);
                    let _ = q.answer.send((answer, generation));
                }
            }
            Ok(Ok(Value::ServerError(e))) => {
                let e = RedisError::from(e);
                for q in batch {
                    let _ = q.answer.send((Err(e.clone()), generation));
                }
            }
            Ok(Ok(other)) => {
                let e = RedisError::from((
                    RedisErrorKind::Parse,
                    "a batch of decisions answered something else than one answer per decision",
                    format!("{other:?}"),
                ));
                for q in batch {
                    let _ = q.answer.send((Err(e.clone()), generation));
                }
            }
            Ok(Err(e)) => {
                for q in batch {
                    let _ = q.answer.send((Err(e.clone()), generation));
                }
            }
            // Every caller's own timer has answered it by now.
            Err(Late) => {}
        }
    }

    /// One decision's answer in a batch, as [`fenced`](Self::fenced) takes it: the `TIME` its
    /// array ends with taken off (and learnt), an error reply an error (a `RAMPARTLATE` one's
    /// time learnt).
    fn answer(&self, answer: Value, received: Nanos) -> Result<Value, RedisError> {
        match answer {
            Value::Array(mut items) => {
                if let Some(Value::Int(at)) = items.last() {
                    if let Ok(at) = u64::try_from(*at) {
                        self.redis_clock.learn(received, at);
                    }
                    items.pop();
                }
                Ok(Value::Array(items))
            }
            Value::ServerError(e) => {
                let e = RedisError::from(e);
                if e.code() == Some(LATE)
                    && let Some(at) = e.detail().and_then(|d| d.trim().parse().ok())
                {
                    self.redis_clock.learn(received, at);
                }
                Err(e)
            }
            other => Ok(other),
        }
    }
}
