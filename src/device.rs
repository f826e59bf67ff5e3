//! Which device the networks run on: `cpu`, `cuda` or `cuda:N`, chosen once per process
//! ([`select`]), read by every network constructor ([`crate::default_device`]).
//!
//! Asking for CUDA never falls back to the CPU in silence: a build without the `cuda` feature,
//! or a machine without that GPU, is an error that says which. Without a choice the default is
//! the CPU, or with the `cuda` feature the first GPU when one is present.

use std::str::FromStr;
use std::sync::RwLock;

use candle_core::Device;

use crate::{Error, Result};

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA GPU number N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device: the CPU always; a GPU only in a build with the `cuda` feature on a
    /// machine that has it (otherwise an error naming what is missing).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n)
        .map_err(|e| Error::Config(format!("cuda:{n} is not available on this machine: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(Error::Config(format!(
        "this facekit was built without CUDA support, so cuda:{n} cannot be used \
         (build it with `--features cuda` on a machine with the CUDA toolkit)"
    )))
}

/// The device chosen with [`select`], if any.
static SELECTED: RwLock<Option<(DeviceSpec, Device)>> = RwLock::new(None);

/// Chooses the device for every network built afterwards in this process. Fails, changing
/// nothing, when the device cannot be opened.
pub fn select(spec: DeviceSpec) -> Result<()> {
    let device = spec.open()?;
    if let Ok(mut slot) = SELECTED.write() {
        *slot = Some((spec, device));
    }
    Ok(())
}

/// The device chosen with [`select`], if one was.
pub fn chosen() -> Option<DeviceSpec> {
    SELECTED
        .read()
        .ok()
        .and_then(|s| s.as_ref().map(|(spec, _)| *spec))
}

/// The device chosen with [`select`], else the default (see the module doc).
pub fn current() -> Device {
    if let Ok(slot) = SELECTED.read() {
        if let Some((_, device)) = slot.as_ref() {
            return device.clone();
        }
    }
    default_device()
}

/// The device used without a choice: the CPU, or with the `cuda` feature the first GPU when
/// one opens. Found once per process (opening a GPU context per network would be slow).
fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        static DEFAULT: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
        DEFAULT
            .get_or_init(|| Device::new_cuda(0).unwrap_or(Device::Cpu))
            .clone()
    }
    #[cfg(not(feature = "cuda"))]
    Device::Cpu
}

/// How the current device was chosen and what it is, for `-v`: e.g. `cpu (default)`,
/// `cuda:1 (--device)`.
pub fn describe() -> String {
    let chosen = SELECTED
        .read()
        .ok()
        .and_then(|s| s.as_ref().map(|(spec, _)| *spec));
    match chosen {
        Some(spec) => format!("{spec} (chosen)"),
        None if current().is_cuda() => "cuda:0 (default: the first GPU)".to_string(),
        None if cfg!(feature = "cuda") => "cpu (default: no GPU found)".to_string(),
        None => "cpu (default; built without CUDA)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_opens() {
        assert!(DeviceSpec::Cpu.open().expect("cpu").is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_naming_it() {
        let e = DeviceSpec::Cuda(0)
            .open()
            .expect_err("no cuda in this build");
        assert!(e.to_string().contains("without CUDA support"), "{e}");
    }
}
