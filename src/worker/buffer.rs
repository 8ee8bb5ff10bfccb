//! Claimed units waiting for an executor: live units first, then backfill, each oldest first.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::queue::{Priority, Unit};

/// A small in-memory queue between the claimer and the executors.
pub struct Buffer {
    lanes: Mutex<[VecDeque<Unit>; 2]>,
    capacity: usize,
    /// Woken when a unit is pushed.
    pub filled: Notify,
    /// Woken when a unit is taken.
    pub drained: Notify,
    /// Woken (one waiter) when a live unit arrives, so an executor waiting for a backfill token
    /// switches to it.
    pub live_filled: Notify,
}

fn lane(priority: Priority) -> usize {
    match priority {
        Priority::Live => 0,
        Priority::Backfill => 1,
    }
}

impl Buffer {
    /// An empty buffer holding at most `capacity` units.
    pub fn new(capacity: usize) -> Self {
        Buffer {
            lanes: Mutex::new([VecDeque::new(), VecDeque::new()]),
            capacity: capacity.max(1),
            filled: Notify::new(),
            drained: Notify::new(),
            live_filled: Notify::new(),
        }
    }

    /// How many more units fit.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// True when at least half the buffer is free: claims come in batches, not one unit at a
    /// time as executors take them.
    pub fn wants_refill(&self) -> bool {
        self.room() * 2 >= self.capacity
    }

    /// How many units wait.
    fn len(&self) -> usize {
        let lanes = self.lanes.lock().unwrap();
        lanes[0].len() + lanes[1].len()
    }

    /// Adds claimed units and wakes executors.
    pub fn push(&self, units: Vec<Unit>) {
        let count = units.len();
        let live = units.iter().any(|u| u.head().priority == Priority::Live);
        {
            let mut lanes = self.lanes.lock().unwrap();
            for unit in units {
                lanes[lane(unit.head().priority)].push_back(unit);
            }
        }
        for _ in 0..count {
            self.filled.notify_one();
        }
        if live {
            self.live_filled.notify_one();
        }
    }

    /// The lane the next unit would come from, if any waits.
    pub fn next_lane(&self) -> Option<Priority> {
        let lanes = self.lanes.lock().unwrap();
        if !lanes[0].is_empty() {
            Some(Priority::Live)
        } else if !lanes[1].is_empty() {
            Some(Priority::Backfill)
        } else {
            None
        }
    }

    /// Takes the most urgent unit.
    pub fn pop(&self) -> Option<Unit> {
        let unit = {
            let mut lanes = self.lanes.lock().unwrap();
            lanes[0].pop_front().or_else(|| lanes[1].pop_front())
        };
        if unit.is_some() {
            self.drained.notify_one();
        }
        unit
    }

    /// Empties the buffer (at shutdown, to release the units).
    pub fn take_all(&self) -> Vec<Unit> {
        let mut lanes = self.lanes.lock().unwrap();
        let [live, backfill] = &mut *lanes;
        live.drain(..).chain(backfill.drain(..)).collect()
    }
}
