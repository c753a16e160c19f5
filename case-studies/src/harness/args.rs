//! A study's declaration and its command line: what `--help` prints
//! (the study's configurations, its own `--NAME VALUE` options, the
//! defaults), and the parsing (lexopt) of the options every study shares.
//! The first module of the harness: it uses none of the others but the
//! allocator's names.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::alloc::Alloc;

/// One configuration of a study: the crate as published, or with freeq.
#[derive(Debug)]
pub struct Config {
    /// Short name, used on the command line (`--configs`) and in tables.
    pub name: &'static str,
    /// Whether the process runs with `freeq::alloc::DeferFrees` around
    /// its allocator.
    pub defer_frees: bool,
    /// One line for `--help`.
    pub about: &'static str,
}

impl Config {
    /// The baseline every study starts with: the crate as published,
    /// plain calls, no `DeferFrees`; `about` says which crate and how.
    pub const fn published(about: &'static str) -> Config {
        Config {
            name: "published",
            defer_frees: false,
            about,
        }
    }

    /// `freeq`: the published crate's calls, each inside a
    /// `freeq::section()`, with `DeferFrees`.
    pub const IN_SECTION: Config = Config {
        name: "freeq",
        defer_frees: true,
        about: "the same calls, each inside freeq::section()",
    };
}

/// A study-specific option: `--NAME VALUE`.
#[derive(Debug)]
pub struct Flag {
    /// The option's name, without dashes.
    pub name: &'static str,
    /// Its default value.
    pub default: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
}

impl Flag {
    /// `--entries`: a cache's capacity (read with `Job::entries`).
    pub const ENTRIES: Flag = Flag {
        name: "entries",
        default: "0",
        help: "the cache's capacity in entries; 0: 64 MiB of values, between 64 and 4096",
    };

    /// `--parts`: heap buffers per cached value.
    pub const PARTS: Flag = Flag {
        name: "parts",
        default: "1",
        help: "heap buffers of the value size per value",
    };
}

/// What a study runs when the command line does not say.
#[derive(Debug)]
pub struct Defaults {
    /// Value sizes, in bytes.
    pub sizes: &'static [usize],
    /// Waiting threads.
    pub waiters: usize,
    /// Milliseconds timed per round.
    pub ms: u64,
    /// Rounds per configuration.
    pub rounds: u32,
}

impl Defaults {
    /// Sizes 16 B to 1 MiB by 16x, 3 rounds of 200 ms, one waiting thread.
    pub const SHORT: Defaults = Defaults {
        sizes: &[16, 256, 4 << 10, 64 << 10, 1 << 20],
        waiters: 1,
        ms: 200,
        rounds: 3,
    };

    /// Sizes 16 B, 1 KiB, 16 KiB, 256 KiB and 1 MiB, 5 rounds of 300 ms,
    /// one waiting thread.
    pub const LONG: Defaults = Defaults {
        sizes: &[16, 1 << 10, 16 << 10, 256 << 10, 1 << 20],
        waiters: 1,
        ms: 300,
        rounds: 5,
    };
}

/// A case study, as its command line shows it: what `--help` says, its
/// configurations (the first is the baseline every ratio is taken
/// against), its own options and its defaults. The function a child runs
/// goes to `harness::main` beside it.
#[derive(Debug)]
pub struct Study {
    /// The binary's name.
    pub name: &'static str,
    /// What it measures, for `--help`.
    pub about: &'static str,
    /// The configurations; the first is the baseline.
    pub configs: &'static [Config],
    /// Study-specific options.
    pub flags: &'static [Flag],
    /// What runs by default.
    pub defaults: Defaults,
}

/// `16 B`, `4 KiB`, `1 MiB`.
pub fn size_name(b: usize) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{}MiB", b >> 20)
    } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
        format!("{}KiB", b >> 10)
    } else {
        format!("{b}B")
    }
}

/// The driver's options.
#[derive(Debug)]
pub struct Options {
    /// Allocators to run, in order.
    pub allocs: Vec<Alloc>,
    /// Value sizes in bytes.
    pub sizes: Vec<usize>,
    /// Rounds per configuration.
    pub rounds: u32,
    /// Milliseconds timed per round.
    pub ms: u64,
    /// Waiting threads.
    pub waiters: usize,
    /// Configurations to run (empty: all).
    pub configs: Vec<String>,
    /// Study-specific options, defaults filled in.
    pub flags: BTreeMap<String, String>,
    /// Where to write every sample as JSON.
    pub json: Option<PathBuf>,
}

/// Parses a size: `16`, `4k`, `64K`, `1m`, `1MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mul) = if let Some(n) = t.strip_suffix('k') {
        (n, 1 << 10)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 1 << 20)
    } else {
        (t, 1)
    };
    match num.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * mul),
        _ => Err(format!("'{s}' is not a size (try 16, 4k, 1m)")),
    }
}

fn list<T>(v: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Result<Vec<T>, String> = v.split(',').filter(|s| !s.is_empty()).map(f).collect();
    match items {
        Ok(v) if v.is_empty() => Err("empty list".into()),
        r => r,
    }
}

fn help(study: &Study) {
    let sizes: Vec<String> = study.defaults.sizes.iter().map(|&s| size_name(s)).collect();
    println!("{}\n\n{}\n", study.name, study.about.trim());
    println!(
        "Usage: cargo run --release --manifest-path case-studies/Cargo.toml --bin {} -- [OPTIONS]\n",
        study.name
    );
    println!("Each (allocator, value size, round, configuration) runs in a fresh child process;");
    println!("configurations alternate round by round; the tables show medians over rounds and");
    println!("ratios against the first configuration.\n");
    println!("Configurations:");
    for c in study.configs {
        let alloc = if c.defer_frees { " [DeferFrees]" } else { "" };
        println!("  {:<16} {}{alloc}", c.name, c.about);
    }
    println!("\nOptions:");
    println!("  --alloc LIST     allocators: glibc,jemalloc,mimalloc [default: all three]");
    println!(
        "  --sizes LIST     value sizes in bytes, k and m suffixes [default: {}]",
        sizes.join(",")
    );
    println!(
        "  --rounds N       rounds per configuration [default: {}]",
        study.defaults.rounds
    );
    println!(
        "  --ms N           milliseconds timed per round, after a quarter as warm-up [default: {}]",
        study.defaults.ms
    );
    println!(
        "  --waiters N      waiting threads [default: {}]",
        study.defaults.waiters
    );
    println!("  --configs LIST   run only these configurations [default: all]");
    println!("  --json FILE      also write every sample as JSON");
    for f in study.flags {
        println!(
            "  --{:<14} {} [default: {}]",
            format!("{} V", f.name),
            f.help,
            f.default
        );
    }
    println!("  -h, --help       print this help");
}

/// Parses the arguments. `Ok(None)`: `--help` was printed.
pub fn parse_args(
    study: &Study,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Option<Options>, String> {
    use lexopt::prelude::*;
    let mut o = Options {
        allocs: Alloc::ALL.to_vec(),
        sizes: study.defaults.sizes.to_vec(),
        rounds: study.defaults.rounds,
        ms: study.defaults.ms,
        waiters: study.defaults.waiters,
        configs: Vec::new(),
        flags: study
            .flags
            .iter()
            .map(|f| (f.name.to_string(), f.default.to_string()))
            .collect(),
        json: None,
    };
    let mut p = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Short('h') | Long("help") => {
                help(study);
                return Ok(None);
            }
            Long("alloc") => {
                let v = p.value().map_err(err)?.string().map_err(err)?;
                o.allocs = list(&v, |s| {
                    Alloc::parse(s).ok_or_else(|| {
                        format!("--alloc: unknown allocator '{s}' (glibc, jemalloc, mimalloc)")
                    })
                })?;
            }
            Long("sizes") => {
                let v = p.value().map_err(err)?.string().map_err(err)?;
                o.sizes = list(&v, parse_size).map_err(|e| format!("--sizes: {e}"))?;
            }
            Long("rounds") => {
                o.rounds = p.value().map_err(err)?.parse().map_err(err)?;
                if o.rounds == 0 {
                    return Err("--rounds: at least 1".into());
                }
            }
            Long("ms") => {
                o.ms = p.value().map_err(err)?.parse().map_err(err)?;
                if o.ms == 0 {
                    return Err("--ms: at least 1".into());
                }
            }
            Long("waiters") => {
                o.waiters = p.value().map_err(err)?.parse().map_err(err)?;
                if o.waiters == 0 {
                    return Err("--waiters: at least 1".into());
                }
            }
            Long("configs") => {
                let v = p.value().map_err(err)?.string().map_err(err)?;
                o.configs = list(&v, |s| {
                    if study.configs.iter().any(|c| c.name == s) {
                        Ok(s.to_string())
                    } else {
                        let names: Vec<&str> = study.configs.iter().map(|c| c.name).collect();
                        Err(format!(
                            "--configs: unknown configuration '{s}' ({})",
                            names.join(", ")
                        ))
                    }
                })?;
            }
            Long("json") => o.json = Some(p.value().map_err(err)?.into()),
            Long(name) if study.flags.iter().any(|f| f.name == name) => {
                let name = name.to_string();
                let v = p.value().map_err(err)?.string().map_err(err)?;
                o.flags.insert(name, v);
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    // A study option whose default is a whole number takes only whole
    // numbers: caught here, not as a panic in the first child.
    for f in study.flags {
        let v = &o.flags[f.name];
        if f.default.parse::<u64>().is_ok() && v.parse::<u64>().is_err() {
            return Err(format!("--{}: '{v}' is not a whole number", f.name));
        }
    }
    Ok(Some(o))
}
