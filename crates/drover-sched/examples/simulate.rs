//! A long seeded simulation: `cargo run -p drover-sched --release --example simulate -- --steps N --seed S [--restore]`.
//! Exits non-zero on the first broken invariant, printing the step and what broke.

use drover_sched::sim::{SimConfig, simulate};

fn main() {
    let mut config = SimConfig { seed: 1, steps: 100_000, restore_every_step: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&arg));
        match arg.as_str() {
            "--steps" => config.steps = value() as u32,
            "--seed" => config.seed = value(),
            "--restore" => config.restore_every_step = true,
            _ => usage(&arg),
        }
    }
    let started = std::time::Instant::now();
    match simulate(&config) {
        Ok(report) => println!("ok in {:.1?}: {report:?}", started.elapsed()),
        Err(v) => {
            eprintln!("seed {} violated an invariant at {v}", config.seed);
            std::process::exit(1);
        }
    }
}

fn usage(arg: &str) -> ! {
    eprintln!("bad argument {arg}; usage: simulate [--steps N] [--seed S] [--restore]");
    std::process::exit(2)
}
