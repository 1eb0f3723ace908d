//! Slot discovery: what this machine offers the master to schedule on.
//!
//! GPUs are found by running `nvidia-smi` (no NVML binding: the CLI is present wherever the
//! driver is, and its CSV output is a stable interface). A machine without a working
//! `nvidia-smi` simply has no GPUs and gets CPU slots.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_api::agent::{SlotKind, SlotSpec};

/// The arguments given to `nvidia-smi`; [`parse_nvidia_smi_csv`] expects exactly these columns.
pub const NVIDIA_SMI_ARGS: [&str; 2] = ["--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"];

/// A wedged driver can make `nvidia-smi` hang for minutes; the agent must still come up.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(15);

/// How to turn the machine's devices into slots.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotOptions {
    /// Number of CPU slots. `None` means 1 when no GPU is found and 0 when there are GPUs;
    /// `Some(n)` gives exactly `n` CPU slots, in addition to any GPU slots.
    pub cpu_slots: Option<u32>,
    /// `--slots N`: exactly `N` slots in total, of GPU kind if GPUs are found (spread
    /// round-robin over the GPUs) else CPU. Overrides `cpu_slots` and `slots_per_gpu`.
    pub slots_override: Option<u32>,
    /// Slots per GPU, for workloads that share one GPU between several workers (AutoLFADS runs
    /// three per GPU). With more than one, slot ids are `gpu0.0`, `gpu0.1`, ... and share the
    /// GPU's `device_index`. 0 is treated as 1: a GPU always gives at least one slot.
    pub slots_per_gpu: u32,
    /// The `nvidia-smi` executable; `None` looks `nvidia-smi` up on `PATH`.
    pub nvidia_smi: Option<PathBuf>,
}

impl Default for SlotOptions {
    fn default() -> Self {
        SlotOptions { cpu_slots: None, slots_override: None, slots_per_gpu: 1, nvidia_smi: None }
    }
}

/// One GPU as reported by `nvidia-smi`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// nvidia-smi's index (PCI bus order); the runner sets `CUDA_DEVICE_ORDER=PCI_BUS_ID` so
    /// CUDA numbers devices the same way.
    pub index: String,
    pub uuid: String,
    pub name: String,
    /// `None` when nvidia-smi reports `[N/A]` (some MIG and vGPU setups).
    pub memory_mb: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NvidiaSmiParseError {
    #[error("line {line_number} of nvidia-smi output has {fields} fields, expected 4: {line:?}")]
    WrongFieldCount { line_number: usize, fields: usize, line: String },
    #[error("line {line_number} of nvidia-smi output has an empty GPU index: {line:?}")]
    EmptyIndex { line_number: usize, line: String },
    #[error("line {line_number} of nvidia-smi output has memory {value:?}, not a number of MiB")]
    BadMemory { line_number: usize, value: String },
}

/// Parses the output of `nvidia-smi --query-gpu=index,uuid,name,memory.total
/// --format=csv,noheader,nounits`, e.g. `0, GPU-5a1f..., NVIDIA A100-SXM4-40GB, 40960`.
///
/// Any malformed line fails the whole parse: a half-understood GPU list could hand a task the
/// wrong device.
pub fn parse_nvidia_smi_csv(text: &str) -> Result<Vec<GpuInfo>, NvidiaSmiParseError> {
    let mut gpus = Vec::new();
    for (line_index, raw_line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let line = raw_line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 4 {
            return Err(NvidiaSmiParseError::WrongFieldCount { line_number, fields: fields.len(), line: line.to_owned() });
        }
        // The name is the only free-text column; should a model name ever contain a comma,
        // everything between the uuid and the memory column belongs to it.
        let index = fields[0];
        let uuid = fields[1];
        let memory = fields[fields.len() - 1];
        let name = fields[2..fields.len() - 1].join(", ");
        if index.is_empty() {
            return Err(NvidiaSmiParseError::EmptyIndex { line_number, line: line.to_owned() });
        }
        let memory_mb = if memory.starts_with('[') {
            None
        } else {
            Some(memory.parse::<u64>().map_err(|_| NvidiaSmiParseError::BadMemory { line_number, value: memory.to_owned() })?)
        };
        gpus.push(GpuInfo { index: index.to_owned(), uuid: uuid.to_owned(), name, memory_mb });
    }
    Ok(gpus)
}

/// Runs `nvidia-smi` and returns the GPUs it reports. A missing binary, a failing or hanging
/// run, or unparseable output all mean "no GPUs": a CPU-only machine is the normal case.
pub fn query_gpus(nvidia_smi: Option<&Path>) -> Vec<GpuInfo> {
    let program = nvidia_smi.unwrap_or(Path::new("nvidia-smi"));
    let output = match run_with_timeout(program, &NVIDIA_SMI_ARGS, NVIDIA_SMI_TIMEOUT) {
        Ok(output) => output,
        Err(error) => {
            tracing::debug!(program = %program.display(), %error, "no GPUs: nvidia-smi not usable");
            return Vec::new();
        }
    };
    match parse_nvidia_smi_csv(&output) {
        Ok(gpus) => gpus,
        Err(error) => {
            // Unlike a missing binary this is surprising (a driver we don't understand), so it
            // is worth more than a debug line.
            tracing::warn!(%error, "no GPUs: cannot parse nvidia-smi output");
            Vec::new()
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot run: {0}")]
    Spawn(std::io::Error),
    #[error("exited with {0}")]
    Failed(std::process::ExitStatus),
    #[error("did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot read its output: {0}")]
    Read(std::io::Error),
}

fn run_with_timeout(program: &Path, args: &[&str], timeout: Duration) -> Result<String, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(RunError::Spawn)?;
    // The output is a few lines, far below the pipe buffer, so the child never blocks on a full
    // pipe while we poll for its exit.
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(RunError::Read)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout(timeout));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if !status.success() {
        return Err(RunError::Failed(status));
    }
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut output).map_err(RunError::Read)?;
    }
    Ok(output)
}

/// Discovers this machine's slots: GPUs through `nvidia-smi`, else CPU slots.
pub fn discover(opts: &SlotOptions) -> Vec<SlotSpec> {
    let gpus = query_gpus(opts.nvidia_smi.as_deref());
    slots_for(&gpus, opts)
}

/// The slots for a given set of GPUs; [`discover`] without running anything.
pub fn slots_for(gpus: &[GpuInfo], opts: &SlotOptions) -> Vec<SlotSpec> {
    if let Some(total) = opts.slots_override {
        if gpus.is_empty() {
            return cpu_slots(total);
        }
        // Round-robin so that N slots over G GPUs load every GPU evenly (some get one more).
        let gpu_count = gpus.len() as u32;
        let per_gpu: Vec<u32> = (0..gpu_count).map(|gpu| total / gpu_count + u32::from(gpu < total % gpu_count)).collect();
        let numbered = per_gpu.iter().any(|&count| count > 1);
        return gpus.iter().zip(per_gpu).flat_map(|(gpu, count)| gpu_slots(gpu, count, numbered)).collect();
    }
    let per_gpu = opts.slots_per_gpu.max(1);
    let mut slots: Vec<SlotSpec> = gpus.iter().flat_map(|gpu| gpu_slots(gpu, per_gpu, per_gpu > 1)).collect();
    let default_cpu_slots = if gpus.is_empty() { 1 } else { 0 };
    slots.extend(cpu_slots(opts.cpu_slots.unwrap_or(default_cpu_slots)));
    slots
}

fn gpu_slots(gpu: &GpuInfo, count: u32, numbered: bool) -> impl Iterator<Item = SlotSpec> + '_ {
    (0..count).map(move |k| SlotSpec {
        id: if numbered { format!("gpu{}.{k}", gpu.index) } else { format!("gpu{}", gpu.index) },
        kind: SlotKind::Cuda,
        device: gpu.name.clone(),
        device_index: Some(gpu.index.clone()),
        memory_mb: gpu.memory_mb,
    })
}

fn cpu_slots(count: u32) -> Vec<SlotSpec> {
    (0..count)
        .map(|k| SlotSpec { id: format!("cpu{k}"), kind: SlotKind::Cpu, device: "CPU".to_owned(), device_index: None, memory_mb: None })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from real machines (uuids shortened): an 8-GPU A100 node prints exactly this
    // shape, with ", " separators and no header or units.
    const TWO_A100: &str = "0, GPU-5a1f3c2e-8d7b-4c1a-9e0f-1b2c3d4e5f60, NVIDIA A100-SXM4-40GB, 40960\n\
                            1, GPU-6b2a4d3f-9e8c-5d2b-af10-2c3d4e5f6071, NVIDIA A100-SXM4-40GB, 40960\n";

    fn gpu(index: &str) -> GpuInfo {
        GpuInfo { index: index.to_owned(), uuid: format!("GPU-{index}"), name: "NVIDIA T4".to_owned(), memory_mb: Some(15360) }
    }

    #[test]
    fn parses_real_nvidia_smi_output() {
        let gpus = parse_nvidia_smi_csv(TWO_A100).expect("parse");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, "1");
        assert_eq!(gpus[1].uuid, "GPU-6b2a4d3f-9e8c-5d2b-af10-2c3d4e5f6071");
        assert_eq!(gpus[1].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(gpus[1].memory_mb, Some(40960));
    }

    #[test]
    fn parses_not_available_memory_and_crlf() {
        let gpus = parse_nvidia_smi_csv("0, GPU-abc, NVIDIA GeForce RTX 3090, [N/A]\r\n\r\n").expect("parse");
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].name, "NVIDIA GeForce RTX 3090");
        assert_eq!(gpus[0].memory_mb, None);
    }

    #[test]
    fn rejects_malformed_output() {
        // What nvidia-smi prints on stdout when the driver is not loaded.
        let driver_error = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA \
                            driver. Make sure that the latest NVIDIA driver is installed and running.";
        assert!(matches!(parse_nvidia_smi_csv(driver_error), Err(NvidiaSmiParseError::WrongFieldCount { line_number: 1, .. })));
        assert!(matches!(parse_nvidia_smi_csv("0, GPU-abc, Tesla V100, lots"), Err(NvidiaSmiParseError::BadMemory { .. })));
    }

    #[test]
    fn no_gpus_gives_one_cpu_slot_by_default() {
        let slots = slots_for(&[], &SlotOptions::default());
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].id, "cpu0");
        assert_eq!(slots[0].kind, SlotKind::Cpu);
        assert_eq!(slots[0].device_index, None);
    }

    #[test]
    fn cpu_slot_count_is_configurable() {
        let opts = SlotOptions { cpu_slots: Some(3), ..SlotOptions::default() };
        let ids: Vec<String> = slots_for(&[], &opts).into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["cpu0", "cpu1", "cpu2"]);
    }

    #[test]
    fn gpus_give_cuda_slots_and_no_cpu_slot_by_default() {
        let slots = slots_for(&[gpu("0"), gpu("1")], &SlotOptions::default());
        let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["gpu0", "gpu1"]);
        assert!(slots.iter().all(|s| s.kind == SlotKind::Cuda));
        assert_eq!(slots[1].device_index.as_deref(), Some("1"));
        assert_eq!(slots[1].memory_mb, Some(15360));
    }

    #[test]
    fn explicit_cpu_slots_are_added_to_gpu_slots() {
        let opts = SlotOptions { cpu_slots: Some(2), ..SlotOptions::default() };
        let ids: Vec<String> = slots_for(&[gpu("0")], &opts).into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["gpu0", "cpu0", "cpu1"]);
    }

    #[test]
    fn several_slots_per_gpu_share_the_device() {
        let opts = SlotOptions { slots_per_gpu: 3, ..SlotOptions::default() };
        let slots = slots_for(&[gpu("0"), gpu("1")], &opts);
        let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["gpu0.0", "gpu0.1", "gpu0.2", "gpu1.0", "gpu1.1", "gpu1.2"]);
        let devices: Vec<&str> = slots.iter().filter_map(|s| s.device_index.as_deref()).collect();
        assert_eq!(devices, ["0", "0", "0", "1", "1", "1"]);
    }

    #[test]
    fn zero_slots_per_gpu_still_gives_one() {
        let opts = SlotOptions { slots_per_gpu: 0, ..SlotOptions::default() };
        assert_eq!(slots_for(&[gpu("0")], &opts).len(), 1);
    }

    #[test]
    fn slots_override_spreads_over_gpus() {
        let opts = SlotOptions { slots_override: Some(3), cpu_slots: Some(4), slots_per_gpu: 5, ..SlotOptions::default() };
        let slots = slots_for(&[gpu("0"), gpu("1")], &opts);
        let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["gpu0.0", "gpu0.1", "gpu1.0"]);
        assert!(slots.iter().all(|s| s.kind == SlotKind::Cuda));
    }

    #[test]
    fn slots_override_one_per_gpu_keeps_plain_ids() {
        let opts = SlotOptions { slots_override: Some(2), ..SlotOptions::default() };
        let ids: Vec<String> = slots_for(&[gpu("0"), gpu("1")], &opts).into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["gpu0", "gpu1"]);
    }

    #[test]
    fn slots_override_without_gpus_gives_cpu_slots() {
        let opts = SlotOptions { slots_override: Some(4), ..SlotOptions::default() };
        let slots = slots_for(&[], &opts);
        assert_eq!(slots.len(), 4);
        assert!(slots.iter().all(|s| s.kind == SlotKind::Cpu));
    }

    #[test]
    fn missing_nvidia_smi_means_no_gpus() {
        let missing = Path::new("/nonexistent/drover-test/nvidia-smi");
        assert!(query_gpus(Some(missing)).is_empty());
        let opts = SlotOptions { nvidia_smi: Some(missing.to_owned()), ..SlotOptions::default() };
        assert_eq!(discover(&opts).len(), 1);
    }
}
