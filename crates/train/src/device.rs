//! `--device auto|cpu|cuda[:N]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a device name: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (CUDA GPU 0 when this
/// build has the `cuda` feature and a GPU is present, else the CPU).
///
/// ```
/// assert!(train::device::parse_device("cpu").unwrap().is_cpu());
/// assert!(train::device::parse_device("tpu").is_err());
/// ```
///
/// # Errors
/// An unknown name, a malformed GPU index, or a CUDA device this build or machine cannot open.
pub fn parse_device(name: &str) -> Result<Device> {
    match check_device(name)? {
        Named::Cpu => Ok(Device::Cpu),
        Named::Auto if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() => cuda(0),
        Named::Auto => Ok(Device::Cpu),
        Named::Cuda(index) => cuda(index),
    }
}

/// A device as named, before anything is opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    /// `cpu`.
    Cpu,
    /// `auto`.
    Auto,
    /// `cuda` (0) or `cuda:N`.
    Cuda(usize),
}

/// What [`parse_device`] would open, without opening it: the name's syntax, and whether this
/// build can use CUDA at all (checked with the other flags, before any data is loaded).
///
/// # Errors
/// An unknown name, a malformed GPU index, or `cuda` in a build without the `cuda` feature.
pub fn check_device(name: &str) -> Result<Named> {
    let named = match name.trim().to_ascii_lowercase().as_str() {
        "cpu" => Named::Cpu,
        "auto" => Named::Auto,
        "cuda" => Named::Cuda(0),
        other => match other.strip_prefix("cuda:") {
            Some(index) => Named::Cuda(
                index
                    .parse()
                    .with_context(|| format!("--device {name}: bad GPU index {index:?}"))?,
            ),
            None => bail!("--device {name}: unknown device; expected auto, cpu, cuda or cuda:N"),
        },
    };
    if matches!(named, Named::Cuda(_)) && !cfg!(feature = "cuda") {
        bail!(
            "--device {name}: this program was built without CUDA support; rebuild it with \
             `--features cuda` or use --device cpu"
        );
    }
    Ok(named)
}

fn cuda(index: usize) -> Result<Device> {
    let device =
        Device::new_cuda(index).with_context(|| format!("cannot open CUDA device {index}"))?;
    // Freed memory stays in the device's pool from step to step, as PyTorch's caching
    // allocator keeps its blocks. Only speed depends on it: a failure is said, not fatal.
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        if let Err(e) = layers::cuda_memory::keep_freed_memory(cuda) {
            crate::warn!("{e}; freed GPU memory goes back to the driver at each synchronisation");
        }
    }
    Ok(device)
}

/// A short name for a device, for logs and `config.json`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_nonsense() {
        assert!(parse_device("cpu").is_ok_and(|d| d.is_cpu()));
        assert!(parse_device("CPU").is_ok_and(|d| d.is_cpu()));
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            assert!(parse_device("auto").is_ok_and(|d| d.is_cpu()));
            let err = parse_device("cuda:1")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("without CUDA"), "{err}");
            assert!(check_device("cuda").is_err());
        }
        assert_eq!(
            check_device(" Cuda:3 ").ok(),
            cfg!(feature = "cuda").then_some(Named::Cuda(3))
        );
        assert_eq!(check_device("auto").ok(), Some(Named::Auto));
        let err = check_device("gpu")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--device gpu") && err.contains("expected auto"),
            "{err}"
        );
    }
}
