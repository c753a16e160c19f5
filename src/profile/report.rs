//! What a snapshot returns: [`Profile`], its [`Site`]s, and the table a
//! person reads.
//!
//! This file calls the profile's tables (for the merged sums); with
//! feature `serde`, serde.

use std::fmt;
use std::time::Duration;

use crate::profile::table::{HELD, LockKind, MAX_SITES, MOVED, Rows, Tally, WAITED};

/// The "file" of the row that sums sites past the table's bound.
const OTHER_FILE: &str = "(other sites)";

/// Which of a sampled section's three times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Measure {
    /// From the acquisition call to holding the lock.
    Waited,
    /// From holding the lock to the outermost release.
    Held,
    /// Freeing the section's queue after the release.
    Moved,
}

impl Measure {
    fn index(self) -> usize {
        match self {
            Measure::Waited => WAITED,
            Measure::Held => HELD,
            Measure::Moved => MOVED,
        }
    }
}

/// One acquisition site's sums over its sampled sections: the call in
/// your code that opened an outermost section (a lock, `section()`,
/// `LockGuard::new`), or, for [`LockKind::Other`], every site past the
/// table's bound together.
#[derive(Clone, Debug)]
pub struct Site {
    file: &'static str,
    line: u32,
    column: u32,
    kind: LockKind,
    /// Times in clock ticks.
    tally: Tally,
    /// Nanoseconds per tick.
    scale: f64,
}

impl Site {
    /// The source file of the call; `"(other sites)"` for the row of sites
    /// past the bound.
    pub fn file(&self) -> &'static str {
        self.file
    }

    /// The line of the call (0 for the "other sites" row).
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column of the call (0 for the "other sites" row).
    pub fn column(&self) -> u32 {
        self.column
    }

    /// What the call opened: which kind of lock, a section, a guard.
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// Sampled sections opened here.
    pub fn sections(&self) -> u64 {
        self.tally.sections
    }

    /// Total time the sampled sections waited for their lock: from the
    /// acquisition call until the lock was held.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.total_ns(WAITED))
    }

    /// Total time the sampled sections held their lock (until the
    /// outermost release, nested sections included).
    pub fn held(&self) -> Duration {
        Duration::from_nanos(self.total_ns(HELD))
    }

    /// Total time spent freeing the sampled sections' queues after the
    /// release: the frees freeq moved out of the lock. It includes the
    /// [`offloaded`](Site::offloaded) time: the batches a reclaimer or
    /// your executor freed, added when they were freed.
    pub fn moved(&self) -> Duration {
        let ticks = self.tally.times[MOVED] + self.tally.off;
        Duration::from_nanos((ticks as f64 * self.scale) as u64)
    }

    /// The part of [`moved`](Site::moved) spent off the releasing thread:
    /// freeing the sampled sections' batches that
    /// [`Policy::Offload`](crate::Policy::Offload) sent to a reclaimer or
    /// to your [`offload executor`](crate::set_offload_executor), timed
    /// where they were freed. The releasing thread's own part (handing the
    /// batch off, freeing what stayed) is the rest.
    pub fn offloaded(&self) -> Duration {
        Duration::from_nanos(self.offloaded_ns())
    }

    /// The sampled sections' batches freed off the releasing thread (see
    /// [`offloaded`](Site::offloaded)).
    pub fn offloaded_batches(&self) -> u64 {
        self.tally.off_batches
    }

    fn offloaded_ns(&self) -> u64 {
        (self.tally.off as f64 * self.scale) as u64
    }

    fn total_ns(&self, which: usize) -> u64 {
        (self.tally.times[which] as f64 * self.scale) as u64
    }

    fn quantile_ns(&self, which: usize, q: f64) -> u64 {
        (self.tally.quantile(which, q) as f64 * self.scale) as u64
    }

    /// Values the sampled sections deferred (and retired), with those
    /// their frees deferred in turn.
    pub fn values(&self) -> u64 {
        self.tally.values
    }

    /// `free()` calls that [`DeferFrees`](crate::alloc::DeferFrees) held
    /// in the sampled sections until their release.
    pub fn frees(&self) -> u64 {
        self.tally.frees
    }

    /// The `p` quantile (0.0 to 1.0) of one section's `measure`, to the
    /// histogram's resolution: two buckets per power of two, so within
    /// about 20%. For [`Measure::Moved`], the releasing thread's part of
    /// each section (not its [`offloaded`](Site::offloaded) batches).
    ///
    /// ```
    /// use freeq::profile::Measure;
    /// freeq::profile::enable(1);
    /// let m = freeq::Mutex::new(0);
    /// for _ in 0..10 {
    ///     *m.lock().unwrap() += 1;
    /// }
    /// let p = freeq::profile::snapshot();
    /// let site = p.sites().iter().find(|s| s.line() == line!() - 3).unwrap();
    /// assert!(site.percentile(Measure::Held, 0.5) <= site.percentile(Measure::Held, 0.99));
    /// # freeq::profile::disable();
    /// ```
    pub fn percentile(&self, measure: Measure, p: f64) -> Duration {
        Duration::from_nanos(self.quantile_ns(measure.index(), p))
    }

    fn label(&self) -> String {
        if self.kind == LockKind::Other {
            OTHER_FILE.to_string()
        } else {
            format!("{}:{}", self.file, self.line)
        }
    }
}

/// What [`snapshot`](crate::profile::snapshot) returns: every site's sums,
/// sorted by [`moved`](Site::moved) time, most first. `Display` prints it
/// as a table.
#[derive(Clone, Debug)]
pub struct Profile {
    every: u32,
    sites: Vec<Site>,
}

impl Profile {
    /// The profile of `rows`, whose times are clock ticks of `scale`
    /// nanoseconds.
    pub(crate) fn build(every: u32, rows: Rows, scale: f64) -> Profile {
        let mut sites: Vec<Site> = rows
            .0
            .into_iter()
            // A row readied for offloaded batches that none reached.
            .filter(|(_, t)| t.sections != 0 || t.off_batches != 0)
            .map(|(key, tally)| match key {
                Some(k) => Site {
                    file: k.at.file(),
                    line: k.at.line(),
                    column: k.at.column(),
                    kind: k.kind,
                    tally,
                    scale,
                },
                None => Site {
                    file: OTHER_FILE,
                    line: 0,
                    column: 0,
                    kind: LockKind::Other,
                    tally,
                    scale,
                },
            })
            .collect();
        sort(&mut sites);
        if sites.len() > MAX_SITES + 1 {
            // Past the bound, the sites with least moved join "other".
            let mut other = Tally::new();
            sites.retain(|s| {
                if s.kind == LockKind::Other {
                    other.absorb(&s.tally);
                    return false;
                }
                true
            });
            for s in sites.drain(MAX_SITES..) {
                other.absorb(&s.tally);
            }
            sites.push(Site {
                file: OTHER_FILE,
                line: 0,
                column: 0,
                kind: LockKind::Other,
                tally: other,
                scale,
            });
            sort(&mut sites);
        }
        Profile { every, sites }
    }

    /// Every site, sorted by moved time, most first (then by held time).
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The sampling rate when the snapshot was taken: one outermost section
    /// in `every()` per thread; 0 if sampling was off.
    pub fn every(&self) -> u32 {
        self.every
    }

    /// The sampled sections of every site together.
    pub fn sections(&self) -> u64 {
        self.sites.iter().map(Site::sections).sum()
    }
}

fn sort(sites: &mut [Site]) {
    let moved = |s: &Site| s.tally.times[MOVED] + s.tally.off;
    sites.sort_by(|a, b| (moved(b), b.tally.times[HELD]).cmp(&(moved(a), a.tally.times[HELD])));
}

/// A duration in three significant figures: `812ns`, `4.10µs`, `12.3ms`.
fn short(ns: u64) -> String {
    let f = ns as f64;
    let (v, unit) = match ns {
        0..=999 => return format!("{ns}ns"),
        1_000..=999_999 => (f / 1e3, "µs"),
        1_000_000..=999_999_999 => (f / 1e6, "ms"),
        _ => (f / 1e9, "s"),
    };
    if v >= 100.0 {
        format!("{v:.0}{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

impl fmt::Display for Profile {
    /// The table: one row per site, times as totals over the sampled
    /// sections and p50 / p99 per section.
    ///
    /// ```
    /// freeq::profile::enable(1);
    /// let m = freeq::Mutex::new(());
    /// {
    ///     let _g = m.lock().unwrap();
    ///     freeq::defer(vec![0u8; 64]);
    /// }
    /// let table = freeq::profile::snapshot().to_string();
    /// assert!(table.contains("moved"));
    /// # freeq::profile::disable();
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.every {
            0 => "sampling off".to_string(),
            1 => "every outermost section sampled".to_string(),
            n => format!("1 in {n} outermost sections sampled per thread"),
        };
        writeln!(
            f,
            "freeq profile: {rate}; {} sections at {} sites",
            self.sections(),
            self.sites.len()
        )?;
        let off = self.sites.iter().any(|s| s.tally.off_batches != 0);
        writeln!(
            f,
            "times: total over the sampled sections (p50 / p99 of one section{})",
            if off {
                "; moved includes offloaded: batches freed off the releasing thread"
            } else {
                ""
            }
        )?;
        let labels: Vec<String> = self.sites.iter().map(Site::label).collect();
        let w = labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let times = |s: &Site, i: usize| {
            let total = match i {
                MOVED => s.moved().as_nanos() as u64,
                _ => s.total_ns(i),
            };
            format!(
                "{} ({} / {})",
                short(total),
                short(s.quantile_ns(i, 0.5)),
                short(s.quantile_ns(i, 0.99))
            )
        };
        let offloaded = |s: &Site| match s.tally.off_batches {
            0 => "-".to_string(),
            1 => format!("{} (1 batch)", short(s.offloaded_ns())),
            n => format!("{} ({n} batches)", short(s.offloaded_ns())),
        };
        let rows: Vec<[String; 4]> = self
            .sites
            .iter()
            .map(|s| {
                [
                    times(s, WAITED),
                    times(s, HELD),
                    times(s, MOVED),
                    offloaded(s),
                ]
            })
            .collect();
        let tw = |i: usize, head: &str| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(head.len())
        };
        let (ww, hw, mw) = (tw(0, "waited"), tw(1, "held"), tw(2, "moved"));
        let head = [
            "site", "lock", "sections", "waited", "held", "moved", "values", "frees",
        ];
        let line = |f: &mut fmt::Formatter<'_>, c: [&str; 8], o: &str| -> fmt::Result {
            write!(
                f,
                "{:<w$}  {:<14} {:>9}  {:<ww$}  {:<hw$}  {:<mw$}  {:>9} {:>9}",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            )?;
            if off {
                write!(f, "  {o}")?;
            }
            writeln!(f)
        };
        line(f, head, "offloaded")?;
        for ((s, label), r) in self.sites.iter().zip(&labels).zip(&rows) {
            let (kind, sections) = (s.kind.to_string(), s.tally.sections.to_string());
            let (values, frees) = (s.tally.values.to_string(), s.tally.frees.to_string());
            let c = [
                label.as_str(),
                &kind,
                &sections,
                &r[0],
                &r[1],
                &r[2],
                &values,
                &frees,
            ];
            line(f, c, &r[3])?;
        }
        Ok(())
    }
}

/// With feature `serde`: the site's figures, times in nanoseconds, each
/// with its p50 and p99.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for Site {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let t = &self.tally;
        let (total, q) = (|i| self.total_ns(i), |i, p| self.quantile_ns(i, p));
        let mut s = serializer.serialize_struct("Site", 18)?;
        s.serialize_field("file", self.file)?;
        s.serialize_field("line", &self.line)?;
        s.serialize_field("column", &self.column)?;
        s.serialize_field("kind", self.kind.name())?;
        s.serialize_field("sections", &t.sections)?;
        s.serialize_field("values", &t.values)?;
        s.serialize_field("frees", &t.frees)?;
        s.serialize_field("waited_ns", &total(WAITED))?;
        s.serialize_field("waited_p50_ns", &q(WAITED, 0.5))?;
        s.serialize_field("waited_p99_ns", &q(WAITED, 0.99))?;
        s.serialize_field("held_ns", &total(HELD))?;
        s.serialize_field("held_p50_ns", &q(HELD, 0.5))?;
        s.serialize_field("held_p99_ns", &q(HELD, 0.99))?;
        s.serialize_field("moved_ns", &(self.moved().as_nanos() as u64))?;
        s.serialize_field("moved_p50_ns", &q(MOVED, 0.5))?;
        s.serialize_field("moved_p99_ns", &q(MOVED, 0.99))?;
        s.serialize_field("offloaded_ns", &self.offloaded_ns())?;
        s.serialize_field("offloaded_batches", &t.off_batches)?;
        s.end()
    }
}

/// With feature `serde`: the sampling rate and the sites, in order.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for Profile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Profile", 2)?;
        s.serialize_field("every", &self.every)?;
        s.serialize_field("sites", &self.sites)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn durations_print_short() {
        assert_eq!(short(0), "0ns");
        assert_eq!(short(812), "812ns");
        assert_eq!(short(4_100), "4.10µs");
        assert_eq!(short(12_340_000), "12.3ms");
        assert_eq!(short(250_000_000), "250ms");
        assert_eq!(short(2_500_000_000), "2.50s");
    }
}
