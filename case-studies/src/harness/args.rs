//! Command-line parsing (lexopt): the options every study shares, plus
//! the study's own `--NAME VALUE` options.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::alloc::Alloc;
use super::driver::Study;
use super::report::size_name;

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
    let sizes: Vec<String> = study.default_sizes.iter().map(|&s| size_name(s)).collect();
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
        study.default_rounds
    );
    println!(
        "  --ms N           milliseconds timed per round, after a quarter as warm-up [default: {}]",
        study.default_ms
    );
    println!(
        "  --waiters N      waiting threads [default: {}]",
        study.default_waiters
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
        sizes: study.default_sizes.to_vec(),
        rounds: study.default_rounds,
        ms: study.default_ms,
        waiters: study.default_waiters,
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
