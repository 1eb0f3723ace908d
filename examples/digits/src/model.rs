//! The classifier (64 -> hidden -> ReLU -> 10), its optimiser, and their saved form.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, ensure};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{Linear, Module};

use crate::data::{CLASSES, Examples, PIXELS};
use crate::rng::SplitMix64;

/// Streams of the trial seed, one per use.
const INIT_STREAM: u64 = 1;
const SHUFFLE_STREAM_BASE: u64 = 1_000;

const WEIGHTS_FILE: &str = "model.safetensors";

pub struct Mlp {
    hidden_layer: Linear,
    output_layer: Linear,
    /// w1, b1, w2, b2: the trainable tensors, shared with the layers above.
    params: Vec<(&'static str, Var)>,
}

impl Mlp {
    /// Weights and biases uniform in +-1/sqrt(fan_in) (PyTorch's default for Linear), drawn from
    /// our own seeded generator since candle's CPU RNG cannot be seeded.
    pub fn new(hidden: usize, seed: u64, device: &Device) -> anyhow::Result<Mlp> {
        let mut rng = SplitMix64::derived(seed, INIT_STREAM);
        let mut uniform = |shape: &[usize], fan_in: usize| -> anyhow::Result<Var> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?)
        };
        let params = vec![
            ("w1", uniform(&[hidden, PIXELS], PIXELS)?),
            ("b1", uniform(&[hidden], PIXELS)?),
            ("w2", uniform(&[CLASSES, hidden], hidden)?),
            ("b2", uniform(&[CLASSES], hidden)?),
        ];
        Ok(Mlp::from_params(params))
    }

    fn from_params(params: Vec<(&'static str, Var)>) -> Mlp {
        let tensor = |i: usize| params[i].1.as_tensor().clone();
        Mlp { hidden_layer: Linear::new(tensor(0), Some(tensor(1))), output_layer: Linear::new(tensor(2), Some(tensor(3))), params }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.output_layer.forward(&self.hidden_layer.forward(x)?.relu()?)
    }
}

/// AdamW, as candle-nn's, but with its moments reachable so that a checkpoint can hold them and
/// a resumed trial continues exactly where it stopped.
pub struct AdamW {
    learning_rate: f64,
    step: u64,
    /// First and second moments, one pair per parameter of the Mlp, in its order.
    moments: Vec<(Tensor, Tensor)>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;
const WEIGHT_DECAY: f64 = 1e-4;

impl AdamW {
    pub fn new(model: &Mlp, learning_rate: f64) -> anyhow::Result<AdamW> {
        let moments = model.params.iter().map(|(_, var)| Ok((var.zeros_like()?, var.zeros_like()?))).collect::<candle_core::Result<_>>()?;
        Ok(AdamW { learning_rate, step: 0, moments })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    fn step(&mut self, model: &Mlp, loss: &Tensor) -> anyhow::Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let lr = self.learning_rate;
        let scale_m = 1.0 / (1.0 - BETA1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - BETA2.powi(self.step as i32));
        for ((_, var), (m, v)) in model.params.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var) else { continue };
            *m = ((&*m * BETA1)? + (g * (1.0 - BETA1))?)?;
            *v = ((&*v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&*m * scale_m)? / ((&*v * scale_v)?.sqrt()? + EPSILON)?)?;
            let decayed = (var.as_tensor().detach() * (1.0 - lr * WEIGHT_DECAY))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

pub struct EpochResult {
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
}

/// One pass over the training set in a shuffled order that depends only on (seed, epoch).
pub fn train_epoch(model: &Mlp, optimizer: &mut AdamW, train: &Examples, batch_size: usize, seed: u64, epoch: u64) -> anyhow::Result<f64> {
    let mut order: Vec<u32> = (0..train.len as u32).collect();
    SplitMix64::derived(seed, SHUFFLE_STREAM_BASE + epoch).shuffle(&mut order);
    let device = train.x.device();
    let mut loss_sum = 0.0;
    for batch in order.chunks(batch_size) {
        let index = Tensor::from_slice(batch, batch.len(), device)?;
        let x = train.x.index_select(&index, 0)?;
        let y = train.y.index_select(&index, 0)?;
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
        optimizer.step(model, &loss)?;
        loss_sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
    }
    Ok(loss_sum / train.len as f64)
}

/// Mean loss and accuracy on `examples`.
pub fn evaluate(model: &Mlp, examples: &Examples) -> anyhow::Result<(f64, f64)> {
    let logits = model.forward(&examples.x)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &examples.y)?.to_scalar::<f32>()? as f64;
    let correct = logits.argmax(D::Minus1)?.eq(&examples.y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok((loss, correct as f64 / examples.len as f64))
}

/// Writes weights and optimiser moments to `dir/model.safetensors`.
pub fn save(model: &Mlp, optimizer: &AdamW, dir: &Path) -> anyhow::Result<()> {
    let mut tensors = HashMap::new();
    for ((name, var), (m, v)) in model.params.iter().zip(&optimizer.moments) {
        tensors.insert(name.to_string(), var.as_tensor().clone());
        tensors.insert(format!("adam_m.{name}"), m.clone());
        tensors.insert(format!("adam_v.{name}"), v.clone());
    }
    let path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &path).with_context(|| format!("writing {}", path.display()))
}

/// Reads what [`save`] wrote into a model and optimiser of the same shape; `optimizer_step` is
/// the optimiser's step count at the save, which Adam's bias correction needs.
pub fn load(dir: &Path, hidden: usize, learning_rate: f64, optimizer_step: u64, device: &Device) -> anyhow::Result<(Mlp, AdamW)> {
    let path = dir.join(WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&path, device).with_context(|| format!("reading {}", path.display()))?;
    let mut take = |name: &str, shape: &[usize]| -> anyhow::Result<Tensor> {
        let tensor = tensors.remove(name).with_context(|| format!("{} has no tensor {name}", path.display()))?;
        ensure!(tensor.dims() == shape, "{name} in {} has shape {:?}, but hidden={hidden} needs {shape:?}", path.display(), tensor.dims());
        Ok(tensor)
    };
    let shapes: [(&'static str, Vec<usize>); 4] =
        [("w1", vec![hidden, PIXELS]), ("b1", vec![hidden]), ("w2", vec![CLASSES, hidden]), ("b2", vec![CLASSES])];
    let mut params = Vec::new();
    let mut moments = Vec::new();
    for (name, shape) in &shapes {
        params.push((*name, Var::from_tensor(&take(name, shape)?)?));
        moments.push((take(&format!("adam_m.{name}"), shape)?, take(&format!("adam_v.{name}"), shape)?));
    }
    Ok((Mlp::from_params(params), AdamW { learning_rate, step: optimizer_step, moments }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Digits;

    fn small_data() -> crate::data::Split {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz");
        Digits::load(&path).unwrap().split(&Device::Cpu).unwrap()
    }

    #[test]
    fn the_same_seed_trains_the_same_and_a_resume_continues_exactly() {
        let data = small_data();
        let (hidden, lr, batch, seed) = (32, 3e-3, 64, 11);
        let run = |epochs: u64| {
            let model = Mlp::new(hidden, seed, &Device::Cpu).unwrap();
            let mut optimizer = AdamW::new(&model, lr).unwrap();
            let losses: Vec<f64> =
                (1..=epochs).map(|epoch| train_epoch(&model, &mut optimizer, &data.train, batch, seed, epoch).unwrap()).collect();
            (model, optimizer, losses)
        };
        let (_, _, straight) = run(3);
        let (model, optimizer, first) = run(2);
        assert_eq!(first, straight[..2], "same seed, same losses");
        assert!(straight[2] < straight[0], "training lowers the loss: {straight:?}");

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        save(&model, &optimizer, dir).unwrap();
        let (model, mut optimizer) = load(dir, hidden, lr, optimizer.step_count(), &Device::Cpu).unwrap();
        let resumed = train_epoch(&model, &mut optimizer, &data.train, batch, seed, 3).unwrap();
        assert_eq!(resumed, straight[2], "a resumed run matches one that never stopped");
        let (_, accuracy) = evaluate(&model, &data.validation).unwrap();
        assert!(accuracy > 0.5, "3 epochs already beat chance by far: {accuracy}");

        let err = load(dir, hidden * 2, lr, 0, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("needs [64, 64]"), "{err}");
    }
}
