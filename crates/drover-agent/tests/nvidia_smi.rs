//! Discovery against a fake `nvidia-smi` that prints what the real one prints.
//!
//! One test function on purpose: writing an executable while another thread of this process
//! forks can make exec fail with ETXTBSY, and this binary holds no other test.

use std::os::unix::fs::PermissionsExt;

use drover_agent::slots::{SlotOptions, discover};
use drover_api::agent::SlotKind;

#[test]
fn discovers_cuda_slots_from_nvidia_smi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("nvidia-smi");
    let args_file = dir.path().join("args");
    // Records its arguments, so the test also checks what discovery asks for.
    let script = format!(
        "#!/bin/sh\n\
         echo \"$@\" > '{}'\n\
         echo '0, GPU-5a1f3c2e-8d7b-4c1a-9e0f-1b2c3d4e5f60, NVIDIA A100-SXM4-40GB, 40960'\n\
         echo '1, GPU-6b2a4d3f-9e8c-5d2b-af10-2c3d4e5f6071, NVIDIA A100-SXM4-40GB, 40960'\n",
        args_file.display()
    );
    std::fs::write(&fake, script).expect("write fake nvidia-smi");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let one_per_gpu = SlotOptions { nvidia_smi: Some(fake.clone()), ..SlotOptions::default() };
    let slots = discover(&one_per_gpu);
    let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["gpu0", "gpu1"], "{slots:?}");
    assert!(slots.iter().all(|s| s.kind == SlotKind::Cuda));
    assert_eq!(slots[0].device_index.as_deref(), Some("0"));
    assert_eq!(slots[1].device_index.as_deref(), Some("1"));
    assert_eq!(slots[1].device, "NVIDIA A100-SXM4-40GB");
    assert_eq!(slots[1].memory_mb, Some(40960));
    let args = std::fs::read_to_string(&args_file).expect("fake nvidia-smi ran");
    assert_eq!(args.trim(), "--query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits");

    let three_per_gpu = SlotOptions { slots_per_gpu: 3, ..one_per_gpu.clone() };
    let slots = discover(&three_per_gpu);
    assert_eq!(slots.len(), 6, "{slots:?}");
    let devices: Vec<&str> = slots.iter().filter_map(|s| s.device_index.as_deref()).collect();
    assert_eq!(devices, ["0", "0", "0", "1", "1", "1"]);
    assert_eq!(slots[4].id, "gpu1.1");

    // A failing nvidia-smi (as when the driver is not loaded) means a CPU machine.
    std::fs::write(&fake, "#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n").expect("rewrite");
    let slots = discover(&one_per_gpu);
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].kind, SlotKind::Cpu);
}
