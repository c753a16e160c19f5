//! A small LSM storage engine that frees memtables and deletes obsolete
//! files after it releases its big mutex, the way RocksDB does by hand.
//!
//! RocksDB keeps all of its bookkeeping behind one *DB mutex*. Jobs that
//! change it (a flush, a compaction) collect what they make obsolete, old
//! memtables, `SuperVersion`s and SST files, into a `JobContext` while the
//! mutex is held, and call `JobContext::Clean()` to free and delete them
//! only after unlocking. Every call site has to remember to do that.
//!
//! This engine has the same shape:
//!
//! * [`Db`] keeps a mutable memtable, a list of immutable (full) memtables
//!   and the open SST files behind one `freeq::Mutex`, the DB mutex.
//! * Writes go to the memtable. When it is full, the write freezes it into
//!   the immutable list and the writing thread flushes.
//! * A flush picks the immutable memtables under the mutex, writes them,
//!   merged, to a new SST file without it, and then, under the mutex again,
//!   *installs* the result: a new [`Version`] listing the tables, and every
//!   fourth flush a compaction that merges all tables into one.
//! * The install hands what it replaced to freeq: the flushed memtables and
//!   the SST files the compaction made obsolete go to `freeq::defer`
//!   ([`SstFile`]'s `Drop` closes and deletes its file), and the old
//!   `Version` goes to `freeq::retire`. The DB mutex unlocks, then the
//!   thread frees the memtables and deletes the files.
//! * Readers find the current `Version` in a `freeq::epoch::Atomic` and read
//!   its tables without the DB mutex, pinned with `freeq::epoch::pin()`.
//!   `retire` frees an old `Version` only once no reader that might have
//!   seen it is still pinned.
//!
//! Tables are fully cached in memory (as if every block were in the block
//! cache), so readers never touch the files themselves and a file can be
//! deleted as soon as it has been compacted away.
//!
//! The example runs a write-heavy workload twice, once as above and once
//! freeing memtables and deleting files with the DB mutex held, and prints
//! how long the install held the DB mutex and how long writers waited for
//! it. It then shows a pinned reader still reading an old `Version` after
//! its files are gone, and old `Version`s being freed by the epoch.
//!
//! ```text
//! cargo run --release --example db_engine -- [--seconds 3] [--writers 2]
//!     [--readers 1] [--memtable 8192] [--keys 65536]
//! ```
//!
//! `--help` lists the options; values may be given as `--name value` or
//! `--name=value`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use freeq::epoch::{self, Atomic, Owned};
use hdrhistogram::Histogram;

#[path = "common/args.rs"]
mod args;

// ---------------------------------------------------------------------------
// The pieces: memtables, tables, SST files, versions
// ---------------------------------------------------------------------------

/// The in-memory write buffer: many small heap allocations, costly to free.
#[derive(Default)]
struct Memtable {
    entries: BTreeMap<String, String>,
}

/// The contents of one SST file, sorted by key, cached in memory.
struct Table {
    file_number: u64,
    entries: Vec<(String, String)>,
}

impl Table {
    fn get(&self, key: &str) -> Option<&str> {
        let i = self
            .entries
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()?;
        Some(&self.entries[i].1)
    }
}

/// An open SST file. Dropping it closes the file and deletes it: that is
/// the work nobody wants to do with the DB mutex held.
struct SstFile {
    path: PathBuf,
    file: Option<File>,
    counters: Arc<Counters>,
}

impl Drop for SstFile {
    fn drop(&mut self) {
        drop(self.file.take()); // close
        if fs::remove_file(&self.path).is_ok() {
            self.counters.files_deleted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The set of tables a reader sees, newest first. Installed whole, never
/// changed; replaced by a newer `Version` and then retired.
pub struct Version {
    number: u64,
    tables: Vec<Arc<Table>>,
    counters: Arc<Counters>,
}

impl Version {
    fn new(number: u64, tables: Vec<Arc<Table>>, counters: &Arc<Counters>) -> Version {
        counters.versions_alive.fetch_add(1, Ordering::Relaxed);
        Version {
            number,
            tables,
            counters: counters.clone(),
        }
    }

    /// The newest value of `key` in this version's tables.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.tables.iter().find_map(|t| t.get(key))
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        self.counters.versions_alive.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Counters {
    versions_alive: AtomicUsize,
    files_written: AtomicU64,
    files_deleted: AtomicU64,
    flushes: AtomicU64,
    compactions: AtomicU64,
}

// ---------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------

/// Everything behind the DB mutex.
struct DbState {
    mem: Memtable,
    /// Full memtables waiting to be flushed, oldest first. The `Arc` lets a
    /// flush read them while the mutex is released.
    imm: Vec<Arc<Memtable>>,
    /// Live SST files, by number.
    files: BTreeMap<u64, SstFile>,
    next_file: u64,
    next_version: u64,
    flushes_since_compaction: u32,
    flush_running: bool,
}

/// A tiny LSM engine. `DEFER` chooses how an install gets rid of what it
/// replaced: `true` defers it with freeq (freed after the DB mutex
/// unlocks), `false` frees it under the DB mutex.
pub struct Db<const DEFER: bool> {
    dir: PathBuf,
    mutex: freeq::Mutex<DbState>,
    current: Atomic<Version>,
    memtable_entries: usize,
    counters: Arc<Counters>,
}

impl<const DEFER: bool> Db<DEFER> {
    /// Opens an empty database in `dir`.
    pub fn open(dir: &Path, memtable_entries: usize) -> Self {
        let counters = Arc::new(Counters::default());
        Db {
            dir: dir.to_owned(),
            mutex: freeq::Mutex::new(DbState {
                mem: Memtable::default(),
                imm: Vec::new(),
                files: BTreeMap::new(),
                next_file: 1,
                next_version: 2,
                flushes_since_compaction: 0,
                flush_running: false,
            }),
            current: Atomic::new(Version::new(1, Vec::new(), &counters)),
            memtable_entries,
            counters,
        }
    }

    /// Writes `key`; returns `true` if the memtable filled up and was
    /// frozen, in which case the caller should [`flush`](Db::flush).
    pub fn put(&self, key: String, value: String) -> bool {
        let asked = Instant::now();
        let mut db = self.mutex.lock().unwrap();
        let acquired = Instant::now();
        if let Some(old) = db.mem.entries.insert(key, value) {
            self.discard(old);
        }
        let frozen = db.mem.entries.len() >= self.memtable_entries;
        if frozen {
            let full = std::mem::take(&mut db.mem);
            db.imm.push(Arc::new(full));
        }
        probe::put(acquired - asked, acquired.elapsed());
        frozen
    }

    /// Reads `key`: the memtables under the DB mutex, then the tables of
    /// the current `Version` without it.
    pub fn get(&self, key: &str) -> Option<String> {
        {
            let db = self.mutex.lock().unwrap();
            let mems = std::iter::once(&db.mem).chain(db.imm.iter().rev().map(|m| &**m));
            for mem in mems {
                if let Some(v) = mem.entries.get(key) {
                    return Some(v.clone());
                }
            }
        }
        self.with_version(|v| v.get(key).map(str::to_owned))
    }

    /// Runs `f` on the current `Version`, pinned: however many flushes and
    /// compactions install newer versions meanwhile, this one stays valid
    /// until `f` returns.
    pub fn with_version<R>(&self, f: impl FnOnce(&Version) -> R) -> R {
        let guard = epoch::pin();
        let current = self.current.load(Ordering::Acquire, &guard);
        // SAFETY: `current` is never null (`open` stores a version and
        // installs only swap in new ones), and the version it points to is
        // freed through `freeq::retire` only after every thread pinned at
        // the time of the swap, `guard` included, has unpinned.
        f(unsafe { current.deref() })
    }

    /// Flushes the immutable memtables to an SST file, compacting all
    /// tables into one every fourth flush, until none is left. Returns at
    /// once if another thread is flushing (it will take this work too).
    pub fn flush(&self) {
        while self.flush_once(false) {}
    }

    /// Merges every table into one now, flushing what is pending first.
    pub fn compact(&self) {
        while self.flush_once(true) {}
    }

    fn flush_once(&self, force_compaction: bool) -> bool {
        // 1. Under the DB mutex: pick the work.
        let (memtables, compacting, old_tables, number) = {
            let mut db = self.mutex.lock().unwrap();
            let compacting = force_compaction || db.flushes_since_compaction >= 3;
            let work = !db.imm.is_empty() || (force_compaction && db.files.len() > 1);
            if db.flush_running || !work {
                return false;
            }
            db.flush_running = true;
            let number = db.next_file;
            db.next_file += 1;
            let old_tables = self.with_version(|v| v.tables.clone());
            (db.imm.clone(), compacting, old_tables, number)
        };

        // 2. Without it: merge and write the new SST file.
        let mut merged = BTreeMap::new();
        if compacting {
            for table in old_tables.iter().rev() {
                for (k, v) in &table.entries {
                    merged.insert(k.as_str(), v.as_str());
                }
            }
        }
        for mem in &memtables {
            for (k, v) in &mem.entries {
                merged.insert(k.as_str(), v.as_str());
            }
        }
        let table = Arc::new(Table {
            file_number: number,
            entries: merged
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        });
        let file = self.write_sst(&table);
        let flushed = memtables.len();
        drop(memtables); // the DB state now holds the only references

        // 3. Under the DB mutex again: install.
        let mut db = self.mutex.lock().unwrap();
        let started = Instant::now();
        let flushed: Vec<Arc<Memtable>> = db.imm.drain(..flushed).collect();
        self.discard(flushed);
        let mut tables = vec![table];
        if compacting {
            for old in &old_tables {
                let sst = db.files.remove(&old.file_number).expect("live file");
                self.discard(sst);
            }
            db.flushes_since_compaction = 0;
            self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        } else {
            tables.extend(old_tables);
            db.flushes_since_compaction += 1;
        }
        db.files.insert(number, file);
        let version = Version::new(db.next_version, tables, &self.counters);
        db.next_version += 1;
        let guard = epoch::pin();
        let old = self
            .current
            .swap(Owned::new(version), Ordering::AcqRel, &guard);
        // SAFETY: `old` was just unlinked from `current`, so no reader can
        // reach it any more; readers that reached it earlier are pinned,
        // and `freeq::retire` frees it only after they have all unpinned.
        // Installs are serialized by the DB mutex, so no one else retires
        // the same version.
        freeq::retire(unsafe { old.into_owned() });
        db.flush_running = false;
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        probe::install(started.elapsed());
        true
        // `db` drops here: the DB mutex unlocks, and then this thread frees
        // the flushed memtables and closes and deletes the obsolete files.
    }

    /// Gets rid of something the engine replaced, with the DB mutex held.
    fn discard<T: Send + 'static>(&self, value: T) {
        if DEFER {
            freeq::defer(value);
        } else {
            drop(value);
        }
    }

    fn write_sst(&self, table: &Table) -> SstFile {
        let path = self.dir.join(format!("{:06}.sst", table.file_number));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create SST file");
        let mut out = BufWriter::new(&file);
        for (k, v) in &table.entries {
            writeln!(out, "{k}\t{v}").expect("write SST file");
        }
        out.flush().expect("write SST file");
        drop(out);
        self.counters.files_written.fetch_add(1, Ordering::Relaxed);
        SstFile {
            path,
            file: Some(file),
            counters: self.counters.clone(),
        }
    }

    /// Live SST files according to the DB state.
    pub fn live_files(&self) -> usize {
        self.mutex.lock().unwrap().files.len()
    }
}

impl<const DEFER: bool> Drop for Db<DEFER> {
    fn drop(&mut self) {
        let current = std::mem::take(&mut self.current);
        // SAFETY: readers only see a version inside `with_version`, which
        // borrows the `Db`; `&mut self` proves none is running, so nothing
        // can still point at the current version.
        drop(unsafe { current.into_owned() });
    }
}

/// Files in `dir`.
fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir).expect("read dir").count()
}

/// Lets crossbeam-epoch advance and run what it has collected, retired
/// `Version`s included.
fn collect_garbage() {
    for _ in 0..8 {
        epoch::pin().flush();
    }
}

// ---------------------------------------------------------------------------
// Measurement: per-thread histograms
// ---------------------------------------------------------------------------

mod probe {
    use super::*;
    use std::cell::RefCell;

    #[derive(Clone)]
    pub struct Times {
        pub put_wait: Histogram<u64>,
        pub put_hold: Histogram<u64>,
        pub install: Histogram<u64>,
    }

    impl Times {
        pub fn new() -> Times {
            let h = || Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
            Times {
                put_wait: h(),
                put_hold: h(),
                install: h(),
            }
        }

        pub fn add(&mut self, other: &Times) {
            self.put_wait.add(&other.put_wait).unwrap();
            self.put_hold.add(&other.put_hold).unwrap();
            self.install.add(&other.install).unwrap();
        }
    }

    thread_local! {
        static TIMES: RefCell<Times> = RefCell::new(Times::new());
    }

    fn ns(d: Duration) -> u64 {
        d.as_nanos().max(1) as u64
    }

    pub fn put(wait: Duration, hold: Duration) {
        TIMES.with(|t| {
            let mut t = t.borrow_mut();
            t.put_wait.saturating_record(ns(wait));
            t.put_hold.saturating_record(ns(hold));
        });
    }

    pub fn install(hold: Duration) {
        TIMES.with(|t| t.borrow_mut().install.saturating_record(ns(hold)));
    }

    pub fn take() -> Times {
        TIMES.with(|t| std::mem::replace(&mut *t.borrow_mut(), Times::new()))
    }
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

struct Config {
    seconds: f64,
    writers: usize,
    readers: usize,
    memtable: usize,
    keys: usize,
}

struct Outcome {
    puts: u64,
    gets: u64,
    found: u64,
    elapsed: Duration,
    times: probe::Times,
    flushes: u64,
    compactions: u64,
    written: u64,
    deleted: u64,
    live_files: usize,
    files_in_dir: usize,
}

fn key(i: usize) -> String {
    format!("user{i:010}")
}

fn run<const DEFER: bool>(cfg: &Config) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::<DEFER>::open(dir.path(), cfg.memtable);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (writes, reads) = thread::scope(|s| {
        let writers: Vec<_> = (0..cfg.writers)
            .map(|w| {
                let (db, stop) = (&db, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(w as u64 + 1);
                    let mut puts = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = key(rng.below(cfg.keys));
                        let v = format!("{k} = {:>48}", rng.below(1 << 30));
                        if db.put(k, v) {
                            db.flush();
                        }
                        puts += 1;
                    }
                    (puts, probe::take())
                })
            })
            .collect();
        let readers: Vec<_> = (0..cfg.readers)
            .map(|r| {
                let (db, stop) = (&db, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(r as u64 + 100);
                    let (mut gets, mut found) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        found += db.get(&key(rng.below(cfg.keys))).is_some() as u64;
                        gets += 1;
                    }
                    (gets, found)
                })
            })
            .collect();
        thread::sleep(Duration::from_secs_f64(cfg.seconds));
        stop.store(true, Ordering::Relaxed);
        let writes: Vec<(u64, probe::Times)> =
            writers.into_iter().map(|h| h.join().unwrap()).collect();
        let reads: Vec<(u64, u64)> = readers.into_iter().map(|h| h.join().unwrap()).collect();
        (writes, reads)
    });
    let elapsed = start.elapsed();
    db.flush();
    let c = &db.counters;
    let mut out = Outcome {
        puts: 0,
        gets: 0,
        found: 0,
        elapsed,
        times: probe::Times::new(),
        flushes: c.flushes.load(Ordering::Relaxed),
        compactions: c.compactions.load(Ordering::Relaxed),
        written: c.files_written.load(Ordering::Relaxed),
        deleted: c.files_deleted.load(Ordering::Relaxed),
        live_files: db.live_files(),
        files_in_dir: files_in(dir.path()),
    };
    for (puts, times) in writes {
        out.puts += puts;
        out.times.add(&times);
    }
    out.times.add(&probe::take()); // the final flush, on this thread
    for (gets, found) in reads {
        out.gets += gets;
        out.found += found;
    }
    out
}

/// A pinned reader keeps reading an old `Version` while a compaction
/// installs a new one and deletes the files behind it.
fn demo_pinned_reader(cfg: &Config) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::<true>::open(dir.path(), cfg.memtable.min(4096));
    let mut i = 0;
    while db.counters.flushes.load(Ordering::Relaxed) < 3 {
        if db.put(key(i % cfg.keys), format!("value {i}")) {
            db.flush();
        }
        i += 1;
    }
    let probe_key = key(0);
    let versions = |db: &Db<true>| db.counters.versions_alive.load(Ordering::Relaxed);

    println!("\nA pinned reader during a compaction (freeq variant):");
    db.with_version(|old| {
        let list: Vec<_> = old.tables.iter().map(|t| t.file_number).collect();
        println!(
            "  reader pins Version {} (SST files {list:?}); files in the directory: {}",
            old.number,
            files_in(dir.path())
        );
        db.compact();
        db.with_version(|new| {
            let list: Vec<_> = new.tables.iter().map(|t| t.file_number).collect();
            println!(
                "  compaction installs Version {} (SST files {list:?}); files in the directory: {}",
                new.number,
                files_in(dir.path())
            );
        });
        println!(
            "  the reader still reads its Version {}: {} = {:?}; Versions alive: {} \
             (the current one, and old ones retired but not yet freed)",
            old.number,
            probe_key,
            old.get(&probe_key).unwrap_or("<missing>"),
            versions(&db)
        );
    });
    collect_garbage();
    println!(
        "  reader unpinned, epoch advanced (pin().flush() x 8): Versions alive: {}",
        versions(&db)
    );
}

const CLI: args::Cli = args::Cli {
    program: "db_engine",
    about: "\
db_engine: a small LSM storage engine behind one freeq::Mutex (the \"DB
mutex\"). Flushes and compactions defer the memtables and SST files they make
obsolete; the files are closed and deleted after the unlock, and old versions
are retired past epoch-pinned readers. Prints DB-mutex hold times with and
without deferral, then a pinned-reader demonstration. Runs about 2 x --seconds.",
    opts: &[
        args::Opt {
            name: "seconds",
            value: "S",
            help: "time for each of the two runs (default 3)",
        },
        args::Opt {
            name: "writers",
            value: "N",
            help: "writer threads (default 2)",
        },
        args::Opt {
            name: "readers",
            value: "N",
            help: "reader threads, 0 for none (default 1)",
        },
        args::Opt {
            name: "memtable",
            value: "N",
            help: "entries per memtable before a flush (default 8192)",
        },
        args::Opt {
            name: "keys",
            value: "N",
            help: "distinct keys (default 65536)",
        },
    ],
};

fn main() {
    let a = CLI.parse();
    let cfg = Config {
        seconds: a.seconds("seconds", 3.0),
        writers: a.threads("writers", 2),
        readers: a.int("readers", 1, 0..=args::MAX_THREADS),
        memtable: a.int("memtable", 8192, 1..=1 << 24),
        keys: a.count("keys", 65_536),
    };

    println!(
        "An LSM engine with one DB mutex: {} writer thread(s) put random keys (of\n\
         {}), {} reader thread(s) get them. A full memtable ({} entries) is flushed to an\n\
         SST file; every fourth flush compacts all files into one. The install step\n\
         of a flush (under the DB mutex) swaps in a new Version and gets rid of the\n\
         flushed memtables and the compacted-away SST files, either by freeing and\n\
         deleting them right there, or by handing them to freeq::defer, which frees\n\
         and deletes them after the unlock. Old Versions go to freeq::retire.\n",
        cfg.writers, cfg.keys, cfg.readers, cfg.memtable
    );

    let dropped = run::<false>(&cfg);
    let deferred = run::<true>(&cfg);

    println!(
        "{:<17} {:>9} {:>9} {:>8} {:>12} {:>11} {:>11} {:>13} {:>12}",
        "memtables/files",
        "puts/s",
        "gets/s",
        "flushes",
        "install mean",
        "install p50",
        "install max",
        "puts waiting",
        "put wait max"
    );
    for (name, o) in [("under the mutex", &dropped), ("freeq::defer", &deferred)] {
        let t = &o.times;
        let secs = o.elapsed.as_secs_f64();
        println!(
            "{:<17} {:>9.0} {:>9.0} {:>8} {:>12} {:>11} {:>11} {:>13} {:>12}",
            name,
            o.puts as f64 / secs,
            o.gets as f64 / secs,
            o.flushes,
            us(t.install.mean()),
            us(t.install.value_at_quantile(0.5) as f64),
            us(t.install.max() as f64),
            format!("{} >1ms", t.put_wait.count_between(1_000_000, u64::MAX)),
            us(t.put_wait.max() as f64),
        );
    }
    println!(
        "\nDB mutex hold of the install, mean: {:.0}x shorter with freeq. \"puts waiting\"\n\
         counts puts that waited over 1 ms for the DB mutex; on a busy machine\n\
         some of those (and the maximum waits) are a lock holder being preempted,\n\
         and throughput varies from run to run.\n",
        dropped.times.install.mean() / deferred.times.install.mean()
    );
    for (name, o) in [("under the mutex", &dropped), ("freeq::defer", &deferred)] {
        println!(
            "{name:<16} {} compactions; SST files written {}, deleted {}; live {}, in the \
             directory {}; {:.0}% of gets found their key",
            o.compactions,
            o.written,
            o.deleted,
            o.live_files,
            o.files_in_dir,
            100.0 * o.found as f64 / o.gets.max(1) as f64
        );
    }

    demo_pinned_reader(&cfg);
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Nanoseconds, printed as microseconds.
fn us(ns: f64) -> String {
    format!("{:.1}µs", ns / 1000.0)
}

/// A small, fast pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}
