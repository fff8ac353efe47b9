//! Decisions batched per connection: a call made while another of the same script is on its way
//! to Redis joins a queue, and a task sends what the queue holds as one call of the script's batch
//! form (`batch.lua`), which decides each in turn and answers each as the script alone would. The
//! task yields once before it takes the queue, so that the tasks ready now join the same batch,
//! and does not wait for the calls already on their way: batches are pipelined.
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
//! - its deadline: a batch carries each decision's own bound on Redis's clock, checked against the
//!   `TIME` the batch reads once for all its decisions (`batch_open.lua`) with a margin for the
//!   batch's own run (100 µs a decision: its answer leaves with the batch's reply), so a decision
//!   whose caller gave up is not written however late Redis runs the batch (one due within the
//!   margin is answered late and sent again, alone), and the caller's own timer answers it on
//!   time whatever the batch does;
//! - its answer and its error: a decision whose key holds unreadable data, or whose write Redis
//!   refuses, answers that error, and the batch's other decisions are made all the same;
//! - cancellation: a decision whose caller went away or gave up before its batch is sent is left
//!   out of it (its key and arguments are copied once into the batch as it joins, and only the
//!   decisions still wanted are sent; each one's deadline is read when the batch is sent).
//!
//! Each runtime has its own queue, sent by a task on that runtime: a decision never waits on a
//! runtime other than its caller's (one that stalls, or is no longer driven).
//!
//! A cluster's decisions are not batched (a script's keys must share a slot), nor are those made
//! outside a tokio runtime. A queued call whose batch is lost (its task dropped with its runtime)
//! answers an error for the failure policy, and is not sent again: it may have reached Redis.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Decisions waiting, per runtime: a batch is sent by a task on its callers' own runtime.
    queues: Vec<Queue>,
}

impl State {
    /// The queue of `runtime`, made if it has none.
    fn queue(&mut self, runtime: tokio::runtime::Id) -> &mut Queue {
        match self.queues.iter().position(|q| q.runtime == runtime) {
            Some(i) => &mut self.queues[i],
            None => {
                self.queues.push(Queue {
                    runtime,
                    pending: Vec::new(),
                    scheduled: false,
                });
                self.queues.last_mut().expect("just pushed")
            }
        }
    }

    /// The batches waiting on `runtime`, taken (its queue goes with them).
    fn take(&mut self, runtime: tokio::runtime::Id) -> Vec<Pending> {
        match self.queues.iter().position(|q| q.runtime == runtime) {
            Some(i) => self.queues.swap_remove(i).pending,
            None => Vec::new(),
        }
    }
}

/// The decisions waiting on one runtime, in batches of up to [`MAX_BATCH`], and whether a task to
/// send them is spawned there and has not taken them yet (a queue exists only while it is).
struct Queue {
    runtime: tokio::runtime::Id,
    pending: Vec<Pending>,
    scheduled: bool,
}

/// A batch being filled: each decision's key and arguments (back to back, with where each ends),
/// copied once as it joins, and who waits for each answer.
#[derive(Default)]
struct Pending {
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    /// Each decision's arguments but its count and deadline (added when the batch is sent).
    args: Vec<u8>,
    arg_ends: Vec<usize>,
    waiters: Vec<Waiter>,
    /// When the batch left, for its callers to read.
    sent: Arc<Sent>,
}

/// When a batch left: the generation of the connection it went on, plus one (0 while it has not
/// left), and the time on the connection's clock. A caller whose timer answers it first tells
/// from it whether Redis kept it waiting (a timeout to count against the connection) or its
/// decision never left (its runtime did not run the batch's task in time, or it was left out).
#[derive(Default)]
struct Sent {
    generation: AtomicU64,
    at: AtomicU64,
}

impl Sent {
    /// The generation of the connection a decision that gives up at `gives_up_at` went on, if
    /// it went before then.
    fn went(&self, gives_up_at: Nanos) -> Option<u64> {
        let generation = self.generation.load(Ordering::Acquire);
        (generation != 0 && self.at.load(Ordering::Relaxed) < gives_up_at).then(|| generation - 1)
    }
}

/// A caller waiting for its decision's answer.
struct Waiter {
    /// Its deadline on tokio's clock, and when it gives up on the connection's clock.
    due: tokio::time::Instant,
    gives_up_at: Nanos,
    /// Where its arguments end in [`Pending::arg_ends`].
    args_end: usize,
    answer: oneshot::Sender<Answer>,
}

impl Pending {
    fn push(
        &mut self,
        key: &[u8],
        args: &[&[u8]],
        due: tokio::time::Instant,
        gives_up_at: Nanos,
        answer: oneshot::Sender<Answer>,
    ) {
        self.keys.extend_from_slice(key);
        self.key_ends.push(self.keys.len());
        for a in args {
            self.args.extend_from_slice(a);
            self.arg_ends.push(self.args.len());
        }
        self.waiters.push(Waiter {
            due,
            gives_up_at,
            args_end: self.arg_ends.len(),
            answer,
        });
    }

    /// The batch's command for the decisions `live` says to send (`verb`, `EVALSHA` or `EVAL`,
    /// with `body`, the SHA or the source): each decision's key, then each one's count of
    /// arguments, its arguments and its deadline from `bounds` (`""` when unknown); or `=` and the
    /// deadline alone for a decision whose arguments are those of the one sent before it
    /// (`batch.lua`): a store's decisions on one clock differ in nothing else.
    fn cmd(&self, verb: &str, body: &str, live: &[bool], bounds: &[Option<u64>]) -> redis::Cmd {
        let sent = live.iter().filter(|l| **l).count();
        let mut cmd = redis::Cmd::with_capacity(
            3 + sent * 3 + self.arg_ends.len(),
            verb.len() + body.len() + 20 + self.keys.len() + self.args.len() + sent * 24,
        );
        cmd.arg(verb).arg(body).arg(sent);
        let mut start = 0;
        for (&end, &live) in self.key_ends.iter().zip(live) {
            if live {
                cmd.arg(&self.keys[start..end]);
            }
            start = end;
        }
        let (mut first, mut start) = (0, 0);
        // The arguments of the decision sent last: where they start, and where each ends.
        let mut previous: Option<(usize, &[usize])> = None;
        for ((w, &live), bound) in self.waiters.iter().zip(live).zip(bounds) {
            let ends = &self.arg_ends[first..w.args_end];
            if live {
                if previous.is_some_and(|p| self.same_args(p, (start, ends))) {
                    cmd.arg("=");
                } else {
                    cmd.arg(ends.len() + 1);
                    let mut from = start;
                    for &end in ends {
                        cmd.arg(&self.args[from..end]);
                        from = end;
                    }
                }
                previous = Some((start, ends));
                match bound {
                    Some(us) => cmd.arg(*us),
                    None => cmd.arg(""),
                };
            }
            start = ends.last().copied().unwrap_or(start);
            first = w.args_end;
        }
        cmd
    }

    /// Whether two decisions' arguments (each where it starts in `args` and where each of them
    /// ends) are the same, one by one.
    fn same_args(&self, (a, a_ends): (usize, &[usize]), (b, b_ends): (usize, &[usize])) -> bool {
        let (Some(&a_end), Some(&b_end)) = (a_ends.last(), b_ends.last()) else {
            return a_ends.is_empty() && b_ends.is_empty();
        };
        a_ends.len() == b_ends.len()
            && self.args[a..a_end] == self.args[b..b_end]
            && a_ends.iter().zip(b_ends).all(|(x, y)| x - a == y - b)
    }
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

/// `n` calls or batches on their way: the count goes down when dropped (the calls' end, or their
/// caller or task going away).
struct InFlight<'a>(&'a Batcher, usize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state().in_flight -= self.1;
    }
}

/// The task that sends the pending batches, from its spawning until it takes them: dropped before
/// (its runtime shut down before it ran), it unschedules itself and drops them (their callers
/// answer an error), so that the next call schedules a task again.
struct Scheduled {
    conn: Arc<Conn>,
    batcher: Arc<Batcher>,
    runtime: tokio::runtime::Id,
    taken: bool,
}

impl Drop for Scheduled {
    fn drop(&mut self) {
        if !self.taken {
            // Dropped after the lock (their answers' wakers run outside it).
            let pending = self.batcher.state().take(self.runtime);
            drop(pending);
        }
    }
}

/// Sends the pending batches, all at once.
async fn send_queue(mut scheduled: Scheduled) {
    // Yields once first. Spawned from a caller on a worker, this task is the worker's next: it ran
    // as soon as that caller was pending, before any other caller ready then, and sent a batch of
    // that one decision, paying for a spawned task per decision (each caller on a task of its
    // own, as a server's requests). Yielded, it runs again once the worker has polled the tasks
    // ready now, or at its periodic check (tokio's `yield_now`: deferred until the worker parks,
    // or after the tasks its event interval allows, 61 by default), so a queued decision can wait
    // that long on a busy worker before its batch leaves. `cargo bench --bench rampart
    // --all-features -- redis_paired`, its `tasks/` rows (two workers), two runs each: without
    // the yield 1.00 decision a script call and 0.63 / 0.65 of throttle-kit's rate at 16 in
    // flight, 0.56 / 0.59 at 64; with it 1.14 / 1.09 and 1.22 / 1.24 (a second yield gained
    // nothing).
    tokio::task::yield_now().await;
    let batches: Vec<Pending> = {
        let mut state = scheduled.batcher.state();
        scheduled.taken = true;
        let batches = state.take(scheduled.runtime);
        state.in_flight += batches.len();
        batches
    };
    let (conn, batcher) = (&scheduled.conn, &scheduled.batcher);
    let _in_flight = InFlight(batcher, batches.len());
    // All at once from this task: the first poll queues each batch's command on the connection,
    // in order (a task per batch could run in any order on a multi-thread runtime).
    let mut sends: Vec<_> = batches
        .into_iter()
        .map(|batch| Box::pin(conn.send_batch(batcher, batch)))
        .collect();
    std::future::poll_fn(|cx| {
        sends.retain_mut(|send| send.as_mut().poll(cx).is_pending());
        if sends.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
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
        let gives_up_at = started.saturating_add(duration_to_nanos(timeout));
        let (waiting, schedule, runtime) = {
            let mut state = batcher.state();
            let may_wait = (state.in_flight > 0 || !state.queues.is_empty())
                && batcher.enabled
                && matches!(self.line().handle, Handle::Single(_));
            // Looked up only for a call that may wait (a reference count taken and given back).
            // With nothing on its way, a queue of another runtime's (one that has stalled, say)
            // is not this call's to join: it goes alone.
            let runtime = may_wait
                .then(tokio::runtime::Handle::try_current)
                .and_then(Result::ok)
                .filter(|rt| {
                    state.in_flight > 0 || state.queues.iter().any(|q| q.runtime == rt.id())
                });
            match runtime {
                Some(runtime) => {
                    let (answer, waiting) = oneshot::channel();
                    let queue = state.queue(runtime.id());
                    if queue
                        .pending
                        .last()
                        .is_none_or(|p| p.waiters.len() >= MAX_BATCH)
                    {
                        queue.pending.push(Pending::default());
                    }
                    let pending = queue.pending.last_mut().expect("pushed if there was none");
                    pending.push(key, args, due, gives_up_at, answer);
                    let sent = Arc::clone(&pending.sent);
                    let schedule = !queue.scheduled;
                    queue.scheduled = true;
                    (Some((waiting, sent)), schedule, Some(runtime))
                }
                None => {
                    state.in_flight += 1;
                    (None, false, None)
                }
            }
        };
        if schedule && let Some(runtime) = &runtime {
            let scheduled = self.me.upgrade().map(|conn| Scheduled {
                conn,
                batcher: Arc::clone(batcher),
                runtime: runtime.id(),
                taken: false,
            });
            match scheduled {
                Some(scheduled) => drop(runtime.spawn(send_queue(scheduled))),
                // No task to send it (the connection is being dropped): the queue's callers,
                // their answers dropped, answer an error.
                None => {
                    let pending = batcher.state().take(runtime.id());
                    drop(pending);
                }
            }
        }
        let Some((waiting, sent)) = waiting else {
            let in_flight = InFlight(batcher, 1);
            let (result, generation) = self
                .fenced(batcher.single, &[key], args, start, started, timeout)
                .await;
            drop(in_flight);
            self.took(started);
            return self.finish(result, timeout, generation);
        };
        let (result, generation) = match deadline::until(due, waiting).await {
            // Run too late, with no time left to send it again: late on the batch's connection.
            Ok(Ok((Err(e), generation)))
                if e.code() == Some(LATE) && tokio::time::Instant::now() >= due =>
            {
                (Err(Late), generation)
            }
            Ok(Ok((Err(e), _))) if e.code() == Some(LATE) => {
                // Run after its deadline by the estimate of Redis's clock, yet answered in time:
                // the estimate is corrected (`send_batch`), and the call goes again, alone.
                self.fenced(batcher.single, &[key], args, start, started, timeout)
                    .await
            }
            Ok(Ok((result, generation))) => (Ok(result), generation),
            // The batch was lost (its task dropped with its runtime): it may have reached Redis,
            // so it is not sent again.
            Ok(Err(_)) if tokio::time::Instant::now() < due => {
                self.took(started);
                return Err(BackendError::with_kind(
                    ErrorKind::Other,
                    "the batch carrying this redis call was dropped (its runtime shut down?)",
                    None,
                ));
            }
            // Late: the batch gave up at the latest deadline of its decisions, this caller's, or
            // the caller's own timer answered first. Redis kept it waiting only if it went.
            Ok(Err(_)) | Err(Late) => match sent.went(gives_up_at) {
                Some(generation) => (Err(Late), generation),
                // Not sent: nothing for the call-time histogram either.
                None => return Err(self.not_sent(timeout)),
            },
        };
        self.took(started);
        self.finish(result, timeout, generation)
    }

    /// The timeout of a decision whose batch never left: not counted against the connection,
    /// which a silent Redis's timeouts are.
    fn not_sent(&self, timeout: Duration) -> BackendError {
        let error = BackendError::with_kind(
            ErrorKind::Timeout,
            format!(
                "the rate limit decision was not made within {timeout:?}: its batch was not sent \
                 to redis in time"
            ),
            None,
        );
        #[cfg(feature = "metrics")]
        self.meters.error(error.kind());
        error
    }

    /// Sends `batch` as one call of `batcher`'s batch form, each decision bounded by its own
    /// deadline, and answers each caller.
    async fn send_batch(&self, batcher: &Batcher, batch: Pending) {
        let (mut handle, generation) = self.current();
        // A decision whose caller went away or gave up is not sent (its caller, if any, answers
        // itself as late); the others carry their deadlines on Redis's clock as known now.
        let now = tokio::time::Instant::now();
        let live: Vec<bool> = batch
            .waiters
            .iter()
            .map(|w| now < w.due && !w.answer.is_closed())
            .collect();
        let bounds: Vec<Option<u64>> = batch
            .waiters
            .iter()
            .map(|w| self.redis_clock.redis_us_at(w.gives_up_at))
            .collect();
        // No caller waits past the latest deadline.
        let Some(due) = batch
            .waiters
            .iter()
            .zip(&live)
            .filter(|(_, live)| **live)
            .map(|(w, _)| w.due)
            .max()
        else {
            return;
        };
        batch.sent.at.store(self.clock.at(now), Ordering::Relaxed);
        batch
            .sent
            .generation
            .store(generation + 1, Ordering::Release);
        let script = batcher.batch;
        let call = async {
            let sha = batch.cmd("EVALSHA", &script.sha, &live, &bounds);
            match handle.query_raw(&sha).await {
                Ok(Value::ServerError(e))
                    if RedisError::from(e.clone()).kind()
                        == RedisErrorKind::Server(ServerErrorKind::NoScript) =>
                {
                    tracing::debug!(sha = %script.sha, "redis script cache is empty; sending the script");
                    handle
                        .query_raw(&batch.cmd("EVAL", &script.code, &live, &bounds))
                        .await
                }
                other => other,
            }
        };
        let reply = deadline::until(due, call).await;
        let received = self.clock.now();
        // The callers whose decisions were sent, in order; the others' answers are dropped.
        let sent: Vec<Waiter> = batch
            .waiters
            .into_iter()
            .zip(live)
            .filter_map(|(w, live)| live.then_some(w))
            .collect();
        match reply.map(|r| r.map(|value| answers_of(value, sent.len()))) {
            Ok(Ok(Ok((answers, at)))) => {
                self.redis_clock.learn(received, at);
                for (w, answer) in sent.into_iter().zip(answers) {
                    let answer = self.answer(answer, received);
                    let _ = w.answer.send((answer, generation));
                }
            }
            Ok(Ok(Err(Value::ServerError(e)))) => {
                let e = RedisError::from(e);
                for w in sent {
                    let _ = w.answer.send((Err(e.clone()), generation));
                }
            }
            Ok(Ok(Err(other))) => {
                let e = RedisError::from((
                    RedisErrorKind::Parse,
                    "a batch of decisions answered something else than one answer per decision",
                    format!("{other:?}"),
                ));
                for w in sent {
                    let _ = w.answer.send((Err(e.clone()), generation));
                }
            }
            Ok(Err(e)) => {
                for w in sent {
                    let _ = w.answer.send((Err(e.clone()), generation));
                }
            }
            // Every caller's own timer has answered it by now.
            Err(Late) => {}
        }
    }

    /// One decision's answer in a batch, as [`fenced`](Self::fenced) answers it: an array as the
    /// script alone answers it without its `TIME`, an error reply an error (a `RAMPARTLATE`
    /// one's time learnt).
    fn answer(&self, answer: Value, received: Nanos) -> Result<Value, RedisError> {
        match answer {
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

/// A batch's reply to `sent` decisions: one answer per decision and the batch's `TIME` (µs on
/// Redis's clock) last, or the reply as it came when it is anything else: a reply one element off
/// would hand each caller its neighbour's answer.
fn answers_of(reply: Value, sent: usize) -> Result<(Vec<Value>, u64), Value> {
    match reply {
        Value::Array(mut answers) if answers.len() == sent + 1 => match answers.pop() {
            Some(Value::Int(at)) if at >= 0 => Ok((answers, at.unsigned_abs())),
            last => {
                answers.extend(last);
                Err(Value::Array(answers))
            }
        },
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply is read as the batch's only when it holds one answer per decision sent and a
    /// `TIME` last.
    #[test]
    fn a_batch_reply_is_one_answer_per_decision_and_a_time() {
        let answer = || Value::Array(vec![Value::Int(1), Value::Int(9), Value::Int(0)]);
        let reply = Value::Array(vec![answer(), answer(), Value::Int(1_700_000_000_000_000)]);
        let (answers, at) = answers_of(reply, 2).expect("two answers and a time");
        assert_eq!(answers, vec![answer(), answer()]);
        assert_eq!(at, 1_700_000_000_000_000);
        for (reply, sent) in [
            // One short, one over.
            (Value::Array(vec![answer(), Value::Int(5)]), 2),
            (
                Value::Array(vec![answer(), answer(), answer(), Value::Int(5)]),
                2,
            ),
            // The right length with an answer where the time goes, or a negative time.
            (Value::Array(vec![answer(), answer(), answer()]), 2),
            (Value::Array(vec![answer(), answer(), Value::Int(-1)]), 2),
            (Value::Okay, 0),
            (Value::Nil, 0),
        ] {
            assert!(answers_of(reply.clone(), sent).is_err(), "{reply:?}");
        }
    }

    /// The command's arguments after the verb and the body, as text.
    fn sent(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .skip(2)
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => panic!("a batch's arguments are bytes"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_decision_with_the_previous_ones_arguments_sends_them_as_equals() {
        let mut batch = Pending::default();
        let due = tokio::time::Instant::now();
        let mut push = |key: &str, args: &[&str]| {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            batch.push(key.as_bytes(), &args, due, 0, oneshot::channel().0);
        };
        // The single form's arguments but the deadline; the same split differently, then a
        // decision with other arguments, then one like it, and one left out of the batch.
        push("k1", &["10", "20", "", "0", "1"]);
        push("k2", &["10", "20", "", "0", "1"]);
        push("k3", &["1", "020", "", "0", "1"]);
        push("k4", &["10", "30", "", "0", "1"]);
        push("k5", &["10", "30", "", "0", "1"]);
        push("k6", &["10", "30", "", "0", "1"]);
        let live = [true, true, true, true, false, true];
        let bounds = [Some(1), Some(2), Some(3), Some(4), Some(5), None];
        let cmd = batch.cmd("EVALSHA", "sha", &live, &bounds);
        let expected: Vec<&str> = [
            &["5", "k1", "k2", "k3", "k4", "k6"][..],
            &["6", "10", "20", "", "0", "1", "1"],
            &["=", "2"],
            &["6", "1", "020", "", "0", "1", "3"],
            &["6", "10", "30", "", "0", "1", "4"],
            // k5 left out: k6 repeats k4, the decision sent before it.
            &["=", ""],
        ]
        .concat();
        assert_eq!(sent(&cmd), expected);
    }
}
