//! Which telemetry a client received: each datagram newest, late (reordered) or doubled, and
//! the ticks that never came.

/// How a telemetry datagram arrived, against those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Of a tick newer than any before: the state to drive from.
    Newest,
    /// Of an older tick not seen before: reordered on the way.
    Late,
    /// Of a tick already seen.
    Duplicate,
}

/// Ticks remembered behind the newest, to tell a late datagram from a duplicate (4.3 s).
const LEDGER_WINDOW: usize = 1024;

/// The ticks a client received telemetry for: which came newest, late or twice, and how many
/// of the ticks spanned never came (lost).
#[derive(Debug, Clone)]
pub struct TickLedger {
    first: Option<u32>,
    newest: Option<u32>,
    seen: Box<[bool; LEDGER_WINDOW]>,
    distinct: u64,
    /// Late arrivals.
    pub late: u64,
    /// Duplicates.
    pub duplicated: u64,
}

impl Default for TickLedger {
    fn default() -> Self {
        Self {
            first: None,
            newest: None,
            seen: Box::new([false; LEDGER_WINDOW]),
            distinct: 0,
            late: 0,
            duplicated: 0,
        }
    }
}

impl TickLedger {
    /// Records a datagram of `tick`.
    pub fn observe(&mut self, tick: u32) -> Arrival {
        let slot = |t: u32| t as usize % LEDGER_WINDOW;
        let Some(newest) = self.newest else {
            self.first = Some(tick);
            self.newest = Some(tick);
            self.seen[slot(tick)] = true;
            self.distinct = 1;
            return Arrival::Newest;
        };
        if tick > newest {
            // The ticks skipped are not seen (yet); what the window held for them is older.
            let skipped = (tick - newest) as usize;
            for k in 1..=skipped.min(LEDGER_WINDOW) {
                self.seen[slot(newest.wrapping_add(k as u32))] = false;
            }
            self.seen[slot(tick)] = true;
            self.newest = Some(tick);
            self.distinct += 1;
            return Arrival::Newest;
        }
        if newest - tick >= LEDGER_WINDOW as u32 {
            // Too old to tell: late, and its tick stays lost.
            self.late += 1;
            return Arrival::Late;
        }
        if self.seen[slot(tick)] {
            self.duplicated += 1;
            return Arrival::Duplicate;
        }
        self.seen[slot(tick)] = true;
        self.distinct += 1;
        self.late += 1;
        if self.first.is_some_and(|f| tick < f) {
            self.first = Some(tick);
        }
        Arrival::Late
    }

    /// Ticks from the first to the newest.
    pub fn spanned(&self) -> u64 {
        match (self.first, self.newest) {
            (Some(f), Some(n)) => u64::from(n - f) + 1,
            _ => 0,
        }
    }

    /// Ticks spanned that no datagram came for.
    pub fn lost(&self) -> u64 {
        self.spanned().saturating_sub(self.distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_tells_lost_late_and_doubled_ticks_apart() {
        let mut l = TickLedger::default();
        // 10, 11, 13, 12 (late), 12 again (doubled), 16, 15 (late); 14 never comes.
        let got: Vec<Arrival> = [10, 11, 13, 12, 12, 16, 15].map(|t| l.observe(t)).to_vec();
        use Arrival::*;
        assert_eq!(got, [Newest, Newest, Newest, Late, Duplicate, Newest, Late]);
        assert_eq!(l.spanned(), 7);
        assert_eq!(l.lost(), 1, "tick 14");
        assert_eq!((l.late, l.duplicated), (2, 1));
        assert_eq!(l.observe(13), Duplicate, "still remembered");
    }

    #[test]
    fn the_ledger_forgets_beyond_its_window_and_counts_lost_across_a_gap() {
        let mut l = TickLedger::default();
        l.observe(0);
        l.observe(5000);
        assert_eq!(l.spanned(), 5001);
        assert_eq!(l.lost(), 4999);
        assert_eq!(l.observe(100), Arrival::Late, "too old to tell");
        assert_eq!(l.lost(), 4999, "and stays lost");
        // A slot reused by a newer tick is not mistaken for the old one.
        l.observe(5000 + LEDGER_WINDOW as u32);
        assert_eq!(l.observe(5001 + 1), Arrival::Late);
    }
}
