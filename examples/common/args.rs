//! The command line every example shares: one small parser (lexopt) and
//! checked conversions, so that each example answers `--help`, accepts
//! `--name value` and `--name=value`, and rejects an unknown flag or a bad
//! value with a one-line error and exit status 2 instead of a panic.
//!
//! An example declares its options once, as a table of [`Opt`]s; the same
//! table drives parsing and the `--help` text.
// Each example uses only some of the conversions.
#![allow(dead_code)]

use std::ops::RangeInclusive;
use std::process;

/// The most threads an option may ask for: enough for any example, few
/// enough that spawning them cannot fail on an ordinary machine.
pub const MAX_THREADS: usize = 1024;

/// The shortest run an example accepts: shorter ones measure too little to
/// print anything but zeros.
pub const MIN_SECONDS: f64 = 0.1;

/// One option: `--name VALUE`, or a switch when `value` is empty.
pub struct Opt {
    /// The long name, without the dashes.
    pub name: &'static str,
    /// The value's placeholder in `--help` (`N`, `SECONDS`, ...); empty for
    /// a switch that takes no value.
    pub value: &'static str,
    /// One line of help, default included.
    pub help: &'static str,
}

/// What an example says about itself in `--help`.
pub struct Cli {
    /// The example's name, as `cargo run --example` takes it.
    pub program: &'static str,
    /// A few lines on what it does and what it prints.
    pub about: &'static str,
    /// Its options, in the order `--help` lists them.
    pub opts: &'static [Opt],
}

/// The options given on the command line, checked against the [`Cli`]
/// table; read them with the typed getters below.
pub struct Args {
    program: &'static str,
    values: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
}

impl Cli {
    /// Parses the process's arguments. `--help` prints the help and exits
    /// with status 0; any error prints one line and exits with status 2.
    pub fn parse(&self) -> Args {
        match self.parse_from(lexopt::Parser::from_env()) {
            Ok(Some(args)) => args,
            Ok(None) => {
                print!("{}", self.help());
                process::exit(0)
            }
            Err(e) => fail(self.program, &e),
        }
    }

    /// `Ok(None)` when help was asked for.
    fn parse_from(&self, mut parser: lexopt::Parser) -> Result<Option<Args>, String> {
        use lexopt::Arg::{Long, Short, Value};
        let mut args = Args {
            program: self.program,
            values: Vec::new(),
            switches: Vec::new(),
        };
        while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
            match arg {
                Short('h') | Long("help") => return Ok(None),
                Long(name) => {
                    let opt = self
                        .opts
                        .iter()
                        .find(|o| o.name == name)
                        .ok_or_else(|| format!("unknown option --{name}"))?;
                    if opt.value.is_empty() {
                        args.switches.push(opt.name);
                    } else {
                        let value = parser
                            .value()
                            .map_err(|e| e.to_string())?
                            .into_string()
                            .map_err(|v| format!("--{}: {v:?} is not valid UTF-8", opt.name))?;
                        args.values.retain(|(n, _)| *n != opt.name);
                        args.values.push((opt.name, value));
                    }
                }
                Short(c) => return Err(format!("unknown option -{c}")),
                Value(v) => return Err(format!("unexpected argument {v:?}")),
            }
        }
        Ok(Some(args))
    }

    /// The `--help` text.
    pub fn help(&self) -> String {
        let mut out = format!(
            "{}\n\nusage: cargo run --release --example {} -- [OPTIONS]\n\noptions:\n",
            self.about.trim_end(),
            self.program
        );
        let width = self
            .opts
            .iter()
            .map(|o| o.name.len() + o.value.len() + 3)
            .max()
            .unwrap_or(0)
            .max(6);
        let mut line = |left: String, help: &str| {
            out.push_str(&format!("  {left:<width$}  {help}\n"));
        };
        for o in self.opts {
            let left = if o.value.is_empty() {
                format!("--{}", o.name)
            } else {
                format!("--{} {}", o.name, o.value)
            };
            line(left, o.help);
        }
        line("-h, --help".into(), "print this help and exit");
        out.push_str("\nValues may also be written --name=value.\n");
        out
    }
}

/// Prints `error` as one line and exits with status 2.
pub fn fail(program: &str, error: &str) -> ! {
    eprintln!("{program}: error: {error} (see --help)");
    process::exit(2)
}

impl Args {
    fn raw(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reports a bad value for `--name` and exits with status 2.
    pub fn bad(&self, name: &str, problem: &str) -> ! {
        fail(self.program, &format!("--{name}: {problem}"))
    }

    /// A whole number in `range`, or `default`.
    pub fn int(&self, name: &str, default: usize, range: RangeInclusive<usize>) -> usize {
        let Some(v) = self.raw(name) else {
            return default;
        };
        match v.trim().parse::<usize>() {
            Ok(n) if range.contains(&n) => n,
            _ => self.bad(name, &expected_int(v, &range)),
        }
    }

    /// A count: a whole number from 1 up, or `default`.
    pub fn count(&self, name: &str, default: usize) -> usize {
        self.int(name, default, 1..=1 << 30)
    }

    /// A number of threads to spawn: 1 to [`MAX_THREADS`], or `default`.
    pub fn threads(&self, name: &str, default: usize) -> usize {
        self.int(name, default, 1..=MAX_THREADS)
    }

    /// A comma-separated list of thread counts (`1,2,8`), each 1 to
    /// [`MAX_THREADS`], or `default`.
    pub fn thread_counts(&self, name: &str, default: &[usize]) -> Vec<usize> {
        let Some(v) = self.raw(name) else {
            return default.to_vec();
        };
        let range = 1..=MAX_THREADS;
        v.split(',')
            .map(|part| match part.trim().parse::<usize>() {
                Ok(n) if range.contains(&n) => n,
                _ => self.bad(name, &expected_int(part, &range)),
            })
            .collect()
    }

    /// A duration in seconds: finite, from [`MIN_SECONDS`] to a day, or
    /// `default`. Zero, negative, NaN and infinite values are refused.
    pub fn seconds(&self, name: &str, default: f64) -> f64 {
        let Some(v) = self.raw(name) else {
            return default;
        };
        match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && (MIN_SECONDS..=86_400.0).contains(&s) => s,
            _ => self.bad(
                name,
                &format!("expected seconds from {MIN_SECONDS} to 86400, got {v:?}"),
            ),
        }
    }

    /// A string value, if given.
    pub fn text(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_owned)
    }

    /// Whether a switch was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }
}

fn expected_int(got: &str, range: &RangeInclusive<usize>) -> String {
    if *range.end() >= 1 << 30 {
        format!(
            "expected a whole number from {} up, got {got:?}",
            range.start()
        )
    } else {
        format!(
            "expected a whole number from {} to {}, got {got:?}",
            range.start(),
            range.end()
        )
    }
}
