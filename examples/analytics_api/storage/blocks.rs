//! The blocks of time that distinct users are counted in: every minute, every 5 and 15 minutes,
//! and every hour, each aligned on its grain since the epoch, in memory and in Redis alike. A
//! history interval (whole minutes, up to an hour) is the union of at most
//! [`MAX_BLOCKS_PER_INTERVAL`] of them, and a whole history request of at most as many as there
//! are minutes kept, however many users they hold.

use super::HISTORY_RETENTION_MINUTES;

/// The grains, in minutes, coarsest first. Each event is counted once in each.
pub(crate) const GRAINS: [i64; 4] = [60, 15, 5, 1];

/// The most blocks one interval of whole minutes (1 to 60) is made of: 14, for 58 minutes from
/// :01 (1, 1, 1, 1, 5, 5, 15, 15, 5, 5, 1, 1, 1, 1).
pub(crate) const MAX_BLOCKS_PER_INTERVAL: usize = 14;

/// A block: its grain and its first minute since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Block {
    pub(crate) grain: i64,
    pub(crate) start: i64,
}

impl Block {
    /// The blocks that hold `minute`, one per grain.
    pub(crate) fn holding(minute: i64) -> impl Iterator<Item = Block> {
        GRAINS.into_iter().map(move |grain| Block {
            grain,
            start: minute.div_euclid(grain) * grain,
        })
    }

    /// Whether the block is still kept at `now_minute`: until its last minute is
    /// [`HISTORY_RETENTION_MINUTES`] old (in Redis, its key expires that long after its last write).
    pub(crate) fn kept_at(self, now_minute: i64) -> bool {
        self.start + self.grain > now_minute - HISTORY_RETENTION_MINUTES
    }
}

/// For each interval of `interval` seconds from `starts`, the kept blocks whose union it is:
/// coarsest first where they fit, so an interval is at most [`MAX_BLOCKS_PER_INTERVAL`] blocks; an
/// interval older than the history kept has none.
pub(crate) fn interval_blocks(starts: &[i64], interval: i64, now: i64) -> Vec<Vec<Block>> {
    let now_minute = now.div_euclid(60);
    starts
        .iter()
        .map(|&s| {
            let to = (s + interval).div_euclid(60);
            let mut at = s.div_euclid(60);
            let mut blocks = Vec::new();
            while at < to {
                let grain = GRAINS
                    .into_iter()
                    .find(|&g| at.rem_euclid(g) == 0 && at + g <= to)
                    .unwrap_or(1);
                let block = Block { grain, start: at };
                if block.kept_at(now_minute) {
                    blocks.push(block);
                }
                at += grain;
            }
            debug_assert!(interval > 3600 || blocks.len() <= MAX_BLOCKS_PER_INTERVAL);
            blocks
        })
        .collect()
}
