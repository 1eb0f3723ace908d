//! An MLP on the 8x8 handwritten digits, as a drover trial.
//!
//! Run by a drover agent (DROVER_TRIAL_ID set), it reads its hyperparameters from the trial,
//! reports `loss` (training) and `validation_loss` / `validation_accuracy` (validation) every
//! epoch, checkpoints every 5 epochs, at the end and when asked to stop, and resumes from the
//! latest checkpoint on a restart.
//!
//! Run by hand, it trains once and prints the metrics:
//! `digits --lr 0.003 --hidden 128 --epochs 30 --batch-size 32 [--seed 0]`
//!
//! The data is read from `data/digits.csv.gz` relative to the working directory (the context
//! directory of the experiment), or from the path in DIGITS_DATA.

mod data;
mod model;
mod rng;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use candle_core::Device;
use drover_sdk::Context;
use serde_json::json;

use crate::data::{Digits, Split};
use crate::model::{AdamW, Mlp};

const DEFAULT_DATA: &str = "data/digits.csv.gz";
const CHECKPOINT_EVERY: u64 = 5;
const STATE_FILE: &str = "state.json";

struct Hparams {
    learning_rate: f64,
    hidden: usize,
    epochs: u64,
    batch_size: usize,
    seed: u64,
}

impl Hparams {
    fn validate(self) -> anyhow::Result<Hparams> {
        ensure!(self.learning_rate.is_finite() && self.learning_rate > 0.0, "learning_rate must be positive");
        ensure!(self.hidden >= 1, "hidden must be at least 1");
        ensure!(self.epochs >= 1, "epochs must be at least 1");
        ensure!(self.batch_size >= 1, "batch_size must be at least 1");
        Ok(self)
    }

    fn describe(&self) -> String {
        format!("lr={} hidden={} epochs={} batch_size={} seed={}", self.learning_rate, self.hidden, self.epochs, self.batch_size, self.seed)
    }
}

fn main() -> anyhow::Result<()> {
    let data_path = std::env::var_os("DIGITS_DATA").map(PathBuf::from).unwrap_or_else(|| DEFAULT_DATA.into());
    if std::env::var_os(drover_sdk::env::TRIAL_ID).is_some() { run_trial(&data_path) } else { run_standalone(&data_path) }
}

fn run_trial(data_path: &Path) -> anyhow::Result<()> {
    let ctx = Context::from_env()?;
    let hp = Hparams {
        learning_rate: ctx.hparam("learning_rate")?,
        hidden: ctx.hparam("hidden")?,
        epochs: ctx.hparam("epochs")?,
        batch_size: ctx.hparam("batch_size")?,
        seed: ctx.hparam_opt("seed")?.unwrap_or(ctx.seed()),
    }
    .validate()?;
    println!("trial {}: {}", ctx.trial_id(), hp.describe());
    let split = Digits::load(data_path)?.split(&Device::Cpu)?;
    let scratch = std::env::temp_dir().join(format!("drover-digits-{}-{}", ctx.trial_id(), std::process::id()));

    let (model, mut optimizer, done_epochs) = match ctx.latest_checkpoint() {
        Some(uuid) => {
            let dir = scratch.join("restore");
            ctx.checkpoint_restore(uuid, &dir).with_context(|| format!("restoring checkpoint {uuid}"))?;
            let resumed = restore(&dir, &hp)?;
            println!("resumed from checkpoint {uuid} after epoch {}", resumed.2);
            resumed
        }
        None => {
            let model = Mlp::new(hp.hidden, hp.seed, &Device::Cpu)?;
            let optimizer = AdamW::new(&model, hp.learning_rate)?;
            (model, optimizer, 0)
        }
    };

    let mut saved_epoch = done_epochs;
    let mut last_epoch = done_epochs;
    for epoch in done_epochs + 1..=hp.epochs {
        if ctx.should_stop() {
            println!("stop requested before epoch {epoch}");
            break;
        }
        let result = run_epoch(&model, &mut optimizer, &split, &hp, epoch)?;
        let step = epoch as i64;
        ctx.report_training(step, &[("loss", result.train_loss)]);
        ctx.report_validation(step, &[("validation_loss", result.validation_loss), ("validation_accuracy", result.validation_accuracy)]);
        last_epoch = epoch;
        // An epoch takes milliseconds: wait for this validation to reach the master, so that an
        // adaptive searcher's verdict on it is seen before the next epoch starts.
        ctx.flush()?;
        if epoch % CHECKPOINT_EVERY == 0 || epoch == hp.epochs {
            save_checkpoint(&ctx, &model, &optimizer, &hp, epoch, &scratch)?;
            saved_epoch = epoch;
        }
    }
    // A stopped trial may be resumed later (a paused experiment, a promoted one): keep its work.
    if last_epoch > saved_epoch {
        save_checkpoint(&ctx, &model, &optimizer, &hp, last_epoch, &scratch)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    ctx.close()?;
    Ok(())
}

fn run_epoch(model: &Mlp, optimizer: &mut AdamW, split: &Split, hp: &Hparams, epoch: u64) -> anyhow::Result<model::EpochResult> {
    let train_loss = model::train_epoch(model, optimizer, &split.train, hp.batch_size, hp.seed, epoch)?;
    let (validation_loss, validation_accuracy) = model::evaluate(model, &split.validation)?;
    Ok(model::EpochResult { train_loss, validation_loss, validation_accuracy })
}

fn save_checkpoint(ctx: &Context, model: &Mlp, optimizer: &AdamW, hp: &Hparams, epoch: u64, scratch: &Path) -> anyhow::Result<()> {
    let dir = scratch.join(format!("save-{epoch}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    model::save(model, optimizer, &dir)?;
    let state = json!({
        "epoch": epoch,
        "optimizer_step": optimizer.step_count(),
        "hidden": hp.hidden,
        "seed": hp.seed,
    });
    std::fs::write(dir.join(STATE_FILE), state.to_string()).context("writing state.json")?;
    let uuid = ctx.checkpoint_save(epoch as i64, &dir, json!({"epoch": epoch, "format": "digits-mlp-v1"}))?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("epoch {epoch}: checkpoint {uuid}");
    Ok(())
}

fn restore(dir: &Path, hp: &Hparams) -> anyhow::Result<(Mlp, AdamW, u64)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let state: serde_json::Value = serde_json::from_str(&text).context("parsing state.json")?;
    let field = |name: &str| state[name].as_u64().with_context(|| format!("state.json has no integer {name}"));
    let (epoch, optimizer_step) = (field("epoch")?, field("optimizer_step")?);
    let (model, optimizer) = model::load(dir, hp.hidden, hp.learning_rate, optimizer_step, &Device::Cpu)?;
    Ok((model, optimizer, epoch))
}

fn run_standalone(data_path: &Path) -> anyhow::Result<()> {
    let hp = parse_args(std::env::args().skip(1))?;
    println!("{}", hp.describe());
    let split = Digits::load(data_path)?.split(&Device::Cpu)?;
    let started = Instant::now();
    let model = Mlp::new(hp.hidden, hp.seed, &Device::Cpu)?;
    let mut optimizer = AdamW::new(&model, hp.learning_rate)?;
    let mut best = (0.0, 0);
    for epoch in 1..=hp.epochs {
        let r = run_epoch(&model, &mut optimizer, &split, &hp, epoch)?;
        println!(
            "epoch {epoch:3}  loss {:.4}  validation_loss {:.4}  validation_accuracy {:.4}",
            r.train_loss, r.validation_loss, r.validation_accuracy
        );
        if r.validation_accuracy > best.0 {
            best = (r.validation_accuracy, epoch);
        }
    }
    println!("best validation_accuracy {:.4} at epoch {}; trained in {:.2}s", best.0, best.1, started.elapsed().as_secs_f64());
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Hparams> {
    let mut hp = Hparams { learning_rate: 0.003, hidden: 128, epochs: 30, batch_size: 32, seed: 0 };
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--lr" => hp.learning_rate = parse_flag(&flag, &value)?,
            "--hidden" => hp.hidden = parse_flag(&flag, &value)?,
            "--epochs" => hp.epochs = parse_flag(&flag, &value)?,
            "--batch-size" => hp.batch_size = parse_flag(&flag, &value)?,
            "--seed" => hp.seed = parse_flag(&flag, &value)?,
            _ => bail!("unknown flag {flag}; expected --lr, --hidden, --epochs, --batch-size, --seed"),
        }
    }
    hp.validate()
}

fn parse_flag<T: std::str::FromStr>(flag: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|err| anyhow::anyhow!("{flag} {value:?}: {err}"))
}
