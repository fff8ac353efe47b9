//! The in-memory store.

use super::active::ActiveUsers;
use super::blocks::{Block, GRAINS, interval_blocks};
use super::distinct::{self, Sketch};
use super::*;

/// The metrics of one type, in memory: those kept, in submission order, with the running
/// aggregate of every metric the type has had.
#[derive(Debug, Default)]
struct MetricsOfType {
    list: VecDeque<Metric>,
    all: Aggregate,
}

/// Every type's metrics, and the order they were submitted in across types (the oldest is
/// forgotten first once more than the store keeps are stored).
#[derive(Debug, Default)]
struct Metrics {
    by_type: HashMap<Arc<str>, MetricsOfType>,
    order: VecDeque<Arc<str>>,
}

/// Time-bucketed activity, in memory. Pruned as it is written (what expired, oldest first), so it
/// stays bounded by the traffic of the active window (the users active in it) and by the minutes
/// of history kept (distinct users in sketches of bounded size).
#[derive(Debug, Default)]
struct ActivityLog {
    /// Users active in the sliding five minutes, overall and by platform.
    active: ActiveUsers,
    /// Distinct users per block of time, for history.
    distinct: DistinctUsers,
    /// Rejections per second (for the sliding five minutes) and per minute (for history).
    rejections_by_second: BTreeMap<i64, u64>,
    rejections_by_minute: BTreeMap<i64, u64>,
}

impl ActivityLog {
    fn prune(&mut self, now: i64) {
        let active_since = now - ACTIVE_WINDOW.as_secs() as i64;
        self.active.expire(active_since);
        let keep_minutes = now.div_euclid(60) - HISTORY_RETENTION_MINUTES;
        self.distinct.prune(now.div_euclid(60));
        self.rejections_by_minute = self.rejections_by_minute.split_off(&keep_minutes);
        self.rejections_by_second = self.rejections_by_second.split_off(&(active_since + 1));
    }
}

/// Distinct users per block of time ([`blocks`](super::blocks)), each a HyperLogLog sketch of at
/// most [`MAX_SKETCH_BYTES`](distinct::MAX_SKETCH_BYTES) however many users it counts: a minute
/// of history holds at most four sketches' worth. Each sketch is shared, so a history request takes
/// the ones it needs under the lock and merges them after releasing it; a write to a sketch that a
/// request still reads copies it first.
#[derive(Debug, Default)]
struct DistinctUsers {
    /// One map per grain of [`GRAINS`], by the block's first minute.
    by_grain: [BTreeMap<i64, Arc<Sketch>>; GRAINS.len()],
}

impl DistinctUsers {
    /// Counts the user whose [`distinct::hash`] is `hash` in every block holding `minute`.
    fn insert(&mut self, hash: u64, minute: i64) {
        for (sketches, block) in self.by_grain.iter_mut().zip(Block::holding(minute)) {
            Arc::make_mut(sketches.entry(block.start).or_default()).insert_hash(hash);
        }
    }

    /// Forgets the blocks no longer kept at `now_minute`.
    fn prune(&mut self, now_minute: i64) {
        for (sketches, grain) in self.by_grain.iter_mut().zip(GRAINS) {
            while let Some(oldest) = sketches.first_entry() {
                let start = *oldest.key();
                if (Block { grain, start }).kept_at(now_minute) {
                    break;
                }
                oldest.remove();
            }
        }
    }

    fn get(&self, block: Block) -> Option<&Arc<Sketch>> {
        let grain = GRAINS.iter().position(|&g| g == block.grain)?;
        self.by_grain[grain].get(&block.start)
    }

    fn bytes(&self) -> usize {
        self.by_grain
            .iter()
            .flat_map(|sketches| sketches.values())
            .map(|s| s.bytes())
            .sum()
    }
}

/// The in-memory store.
#[derive(Debug)]
pub(crate) struct MemoryStorage {
    metrics: RwLock<Metrics>,
    /// The most metrics kept (at least 1); past it the oldest is forgotten.
    kept: usize,
    event_counts: RwLock<HashMap<String, u64>>,
    activity: Mutex<ActivityLog>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::keeping(MAX_METRICS)
    }
}

impl MemoryStorage {
    /// An empty store that keeps at most `kept` metrics (at least 1).
    pub(crate) fn keeping(kept: usize) -> Self {
        Self {
            metrics: RwLock::default(),
            kept: kept.max(1),
            event_counts: RwLock::default(),
            activity: Mutex::default(),
        }
    }

    /// The number of metrics of a type, and `limit` of them from `offset`, in submission order.
    pub(super) fn page(
        &self,
        metric_type: &str,
        offset: usize,
        limit: usize,
    ) -> (u64, Vec<Metric>) {
        self.with_type(metric_type, |o| {
            let list = o.map(|o| &o.list);
            (
                list.map_or(0, |l| l.len() as u64),
                list.into_iter()
                    .flat_map(|l| l.iter().skip(offset).take(limit))
                    .cloned()
                    .collect(),
            )
        })
    }

    /// The number of metrics kept (of every type), and the newest `limit` of them, oldest first,
    /// in submission order: the work is `limit`'s, however many types and metrics there are.
    pub(super) fn newest(&self, limit: usize) -> (u64, Vec<Metric>) {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        // The k-th newest entry of a type in the order is that type's k-th newest metric.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut newest: Vec<Metric> = metrics
            .order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|t| {
                let back = seen.entry(&**t).or_default();
                let list = &metrics.by_type.get(t)?.list;
                let m = list.get(list.len().checked_sub(*back + 1)?)?;
                *back += 1;
                Some(m.clone())
            })
            .collect();
        newest.reverse();
        (metrics.order.len() as u64, newest)
    }

    /// The summary of a type's metrics, all of them (from the running aggregate) or those
    /// timestamped at or after `since`.
    pub(super) fn summary(&self, metric_type: &str, since: Option<DateTime<Utc>>) -> Summary {
        self.with_type(metric_type, |o| match since {
            None => o.map(|o| o.all.summary()).unwrap_or_default(),
            Some(since) => {
                let list = o.into_iter().flat_map(|o| o.list.iter());
                Summary::of(list.filter(|m| m.timestamp >= since))
            }
        })
    }

    /// How many events of a type were recorded.
    pub(super) fn event_count(&self, event_type: &str) -> u64 {
        self.event_counts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(event_type)
            .copied()
            .unwrap_or(0)
    }

    /// Stores `m`; past the most metrics kept, forgets the oldest stored (of any type), and a
    /// type with no metric left altogether (its aggregate too). Answers the types that lost
    /// metrics.
    pub(super) fn add_metric(&self, m: &Metric) -> Vec<String> {
        let mut forgotten: Vec<String> = Vec::new();
        let mut metrics = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        let metrics = &mut *metrics;
        let name = match metrics.by_type.get_key_value(m.metric_type.as_str()) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(m.metric_type.as_str()),
        };
        let of_type = metrics.by_type.entry(Arc::clone(&name)).or_default();
        of_type.all.add(m);
        of_type.list.push_back(m.clone());
        metrics.order.push_back(name);
        while metrics.order.len() > self.kept {
            let Some(oldest) = metrics.order.pop_front() else {
                break;
            };
            if let Some(of_type) = metrics.by_type.get_mut(&oldest) {
                of_type.list.pop_front();
                if of_type.list.is_empty() {
                    metrics.by_type.remove(&oldest);
                }
            }
            if !forgotten.iter().any(|t| **t == *oldest) {
                forgotten.push(oldest.to_string());
            }
        }
        forgotten
    }

    fn with_type<R>(&self, metric_type: &str, f: impl FnOnce(Option<&MetricsOfType>) -> R) -> R {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        f(metrics.by_type.get(metric_type))
    }

    pub(super) fn record_event(&self, e: &EventRecord, now: DateTime<Utc>) {
        {
            let mut counts = self.event_counts.write().unwrap_or_else(|p| p.into_inner());
            let kind = if counts.contains_key(&e.event_type) || counts.len() < MAX_EVENT_TYPES {
                e.event_type.as_str()
            } else {
                OTHER
            };
            *counts.entry(kind.to_owned()).or_default() += 1;
        }
        let now = now.timestamp();
        let hash = distinct::hash(e.user_id);
        let mut log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        log.prune(now);
        log.distinct.insert(hash, now.div_euclid(60));
        log.active.record(e.user_id, &e.platform, now);
    }

    pub(super) fn record_rejections(&self, n: u64, now: DateTime<Utc>) {
        let now = now.timestamp();
        let mut log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        log.prune(now);
        *log.rejections_by_second.entry(now).or_default() += n;
        *log.rejections_by_minute
            .entry(now.div_euclid(60))
            .or_default() += n;
    }

    pub(super) fn activity(&self, now: DateTime<Utc>) -> Activity {
        let now = now.timestamp();
        let since = now - ACTIVE_WINDOW.as_secs() as i64;
        let mut log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        // Counts kept as users come and go: the work is the platforms', not the users'.
        log.active.expire(since);
        let (active_users, by_platform) = log.active.counts();
        Activity {
            active_users,
            by_platform,
            rejected: log
                .rejections_by_second
                .range(since + 1..=now)
                .map(|(_, n)| n)
                .sum(),
        }
    }

    /// The bytes the distinct-user sketches of history hold, all blocks together: at most
    /// [`MAX_SKETCH_BYTES`](distinct::MAX_SKETCH_BYTES) per block kept, whatever ids are sent.
    #[allow(dead_code, reason = "read by the tests")]
    pub(crate) fn distinct_users_bytes(&self) -> usize {
        let log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        log.distinct.bytes()
    }

    pub(super) fn history(
        &self,
        series: &Series,
        starts: &[i64],
        interval: i64,
        now: i64,
    ) -> Vec<f64> {
        match series {
            Series::ActiveUsers => {
                let blocks = interval_blocks(starts, interval, now);
                // The lock is held to take the sketches (shared, not copied), not to merge them.
                let sketches: Vec<Vec<Arc<Sketch>>> = {
                    let log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                    blocks
                        .iter()
                        .map(|bs| {
                            bs.iter()
                                .filter_map(|&b| log.distinct.get(b).cloned())
                                .collect()
                        })
                        .collect()
                };
                sketches
                    .iter()
                    .map(|s| distinct::union_count(s.iter().map(|s| &**s)) as f64)
                    .collect()
            }
            Series::ApiRejections => {
                let log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                starts
                    .iter()
                    .map(|&s| {
                        log.rejections_by_minute
                            .range(s.div_euclid(60)..(s + interval).div_euclid(60))
                            .map(|(_, n)| *n as f64)
                            .sum()
                    })
                    .collect()
            }
            Series::Metric(t) => self.with_type(t, |of_type| {
                let list = of_type.into_iter().flat_map(|o| o.list.iter());
                averages_by_interval(list, starts, interval)
            }),
        }
    }
}
