//! Collapsing repeats, pure (the caller passes the time). The first alert of a rule and
//! session goes out at once and opens a window; repeats within the window are only counted;
//! when the window ends, one summary alert says how many more came (`count`, `repeat`),
//! carrying the last of them, and the next occurrence opens a new window. A window with no
//! repeats ends silently. Non-collapsible alerts, and every alert with a zero window, pass
//! straight through.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::alert::{Alert, CollapseKey};

/// One open window.
#[derive(Debug)]
struct Window {
    ends: Instant,
    repeats: u64,
    last: Option<Alert>,
}

/// The open windows of one webhook.
#[derive(Debug)]
pub struct Collapser {
    window: Duration,
    open: HashMap<CollapseKey, Window>,
}

impl Collapser {
    pub fn new(window: Duration) -> Collapser {
        Collapser {
            window,
            open: HashMap::new(),
        }
    }

    /// `alert` happened at `now`: the alerts to send now (summaries of windows that ended
    /// first, then `alert` itself unless it is a repeat).
    pub fn offer(&mut self, alert: Alert, now: Instant) -> Vec<Alert> {
        let mut out = self.flush(now);
        if !alert.collapsible || self.window.is_zero() {
            out.push(alert);
            return out;
        }
        match self.open.get_mut(&alert.key()) {
            Some(w) => {
                w.repeats += 1;
                w.last = Some(alert);
            }
            None => {
                self.open.insert(
                    alert.key(),
                    Window {
                        ends: now + self.window,
                        repeats: 0,
                        last: None,
                    },
                );
                out.push(alert);
            }
        }
        out
    }

    /// Closes the windows that ended by `now`: one summary for each that saw repeats.
    pub fn flush(&mut self, now: Instant) -> Vec<Alert> {
        let ended: Vec<CollapseKey> = self
            .open
            .iter()
            .filter(|(_, w)| w.ends <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<(Instant, Alert)> = Vec::new();
        for k in ended {
            let w = self.open.remove(&k).expect("key just listed");
            if let Some(last) = w.last {
                out.push((w.ends, summary(last, w.repeats)));
            }
        }
        out.sort_by_key(|(ends, a)| (*ends, a.event.seq));
        out.into_iter().map(|(_, a)| a).collect()
    }

    /// Closes every window (at shutdown): the summaries still owed.
    pub fn drain(&mut self) -> Vec<Alert> {
        let mut out: Vec<Alert> = self
            .open
            .drain()
            .filter_map(|(_, w)| w.last.map(|l| summary(l, w.repeats)))
            .collect();
        out.sort_by_key(|a| a.event.seq);
        out
    }

    /// When the next window ends, if one is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|w| w.ends).min()
    }
}

fn summary(last: Alert, repeats: u64) -> Alert {
    Alert {
        summary: format!("{repeats} more: {}", last.summary),
        count: repeats,
        repeat: true,
        ..last
    }
}

#[cfg(test)]
mod tests {
    use super::super::alert::alert_for;
    use super::super::alert::tests::{emitted, refusal};
    use super::*;
    use crate::approval::events::Event;

    fn refused(seq: u64, session: u64, rule: &str) -> Alert {
        alert_for(&emitted(seq, refusal(session, rule))).unwrap()
    }

    #[test]
    fn the_first_goes_at_once_and_repeats_become_one_summary_at_the_window_end() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let mut c = Collapser::new(w);
        let first = c.offer(refused(1, 7, "r"), t0);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].count, first[0].repeat), (1, false));
        for seq in 2..=5 {
            assert!(c
                .offer(refused(seq, 7, "r"), t0 + Duration::from_secs(seq))
                .is_empty());
        }
        // Another session or another rule is not a repeat.
        assert_eq!(c.offer(refused(6, 8, "r"), t0).len(), 1);
        assert_eq!(c.offer(refused(7, 7, "other"), t0).len(), 1);
        assert_eq!(c.next_deadline(), Some(t0 + w));
        assert!(c.flush(t0 + w - Duration::from_millis(1)).is_empty());
        let summaries = c.flush(t0 + w);
        assert_eq!(
            summaries.len(),
            1,
            "only the window with repeats: {summaries:?}"
        );
        let s = &summaries[0];
        assert_eq!((s.count, s.repeat, s.event.seq), (4, true, 5));
        assert!(s.summary.starts_with("4 more: refused"), "{}", s.summary);
        assert_eq!(c.next_deadline(), None);
        // After the window, the next one is sent at once again.
        assert_eq!(c.offer(refused(8, 7, "r"), t0 + w).len(), 1);
    }

    #[test]
    fn a_late_occurrence_first_releases_the_summary_it_follows() {
        let t0 = Instant::now();
        let mut c = Collapser::new(Duration::from_secs(10));
        c.offer(refused(1, 1, "r"), t0);
        c.offer(refused(2, 1, "r"), t0 + Duration::from_secs(1));
        let out = c.offer(refused(3, 1, "r"), t0 + Duration::from_secs(11));
        let got: Vec<_> = out.iter().map(|a| (a.event.seq, a.repeat)).collect();
        assert_eq!(got, vec![(2, true), (3, false)]);
    }

    #[test]
    fn zero_window_and_non_collapsible_alerts_pass_through() {
        let t0 = Instant::now();
        let mut off = Collapser::new(Duration::ZERO);
        for seq in 1..=3 {
            assert_eq!(off.offer(refused(seq, 1, "r"), t0).len(), 1);
        }
        let mut on = Collapser::new(Duration::from_secs(60));
        let mut a = refused(1, 1, "r");
        a.collapsible = false;
        assert_eq!(on.offer(a.clone(), t0).len(), 1);
        assert_eq!(on.offer(a, t0).len(), 1);
        assert_eq!(on.next_deadline(), None);
    }

    #[test]
    fn drain_returns_the_summaries_still_owed() {
        let t0 = Instant::now();
        let mut c = Collapser::new(Duration::from_secs(60));
        let down = |seq| {
            alert_for(&emitted(
                seq,
                Event::UpstreamDown {
                    error: "connection refused".into(),
                },
            ))
            .unwrap()
        };
        assert_eq!(c.offer(down(1), t0).len(), 1);
        assert!(c.offer(down(2), t0).is_empty());
        let owed = c.drain();
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].count, 1);
        assert_eq!(c.next_deadline(), None);
    }
}
