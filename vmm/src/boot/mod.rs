//! Loading the guest: kernel (ELF with or without a PVH note, bzImage), initrd and command
//! line, and the boot-protocol structures that describe memory to the kernel.
//!
//! The result is a [`BootEntry`]: where the boot vCPU starts and what it is handed.

mod linux;
mod memmap;
mod pvh;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode at `entry`, `ebx` = address of `hvm_start_info`.
    Pvh {
        /// Entry point from the PVH ELF note.
        entry: u64,
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
    /// Linux 64-bit boot protocol: long mode at `entry`, `rsi` = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
        /// Address of `boot_params`.
        zero_page: u64,
    },
}

/// The kernel or initrd could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The file could not be opened or read.
    #[error("cannot read {0} {path}", path = .1.display())]
    Read(&'static str, PathBuf, #[source] io::Error),
    /// The path is a directory or other non-file.
    #[error("{0} {path} is not a regular file", path = .1.display())]
    NotAFile(&'static str, PathBuf),
    /// Neither ELF nor bzImage.
    #[error("{} is not a kernel: neither an ELF image nor a bzImage", .0.display())]
    NotAKernel(PathBuf),
    /// linux-loader rejected the image.
    #[error("{} is not a loadable x86_64 kernel", .0.display())]
    Load(PathBuf, #[source] linux_loader::loader::Error),
    /// The initrd does not fit in guest RAM next to the kernel.
    #[error("initrd {} ({size} bytes) does not fit in guest memory; give the guest more --mem", .path.display())]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is too long.
    #[error("the kernel command line is {0} bytes long; the limit is {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    /// Writing boot structures failed.
    #[error("cannot write the boot structures into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// Writing boot structures through linux-loader failed.
    #[error("cannot write the boot parameters into guest memory")]
    Configure(#[source] linux_loader::configurator::Error),
}

/// What the kernel is told besides memory: command line, initrd, ACPI root pointer.
pub struct BootInputs<'a> {
    /// Kernel path.
    pub kernel: &'a Path,
    /// Optional initrd path.
    pub initrd: Option<&'a Path>,
    /// Full command line.
    pub cmdline: &'a str,
    /// Guest RAM size in bytes.
    pub mem_bytes: u64,
    /// Address of the ACPI RSDP, if tables were written.
    pub rsdp: Option<GuestAddress>,
}

/// A loaded initrd.
#[derive(Clone, Copy, Debug)]
pub struct Initrd {
    /// Where it is in guest memory.
    pub addr: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
}

/// Loads everything into `mem` and returns where the boot vCPU starts.
pub fn load(mem: &GuestMemoryMmap, inputs: &BootInputs) -> Result<BootEntry, BootError> {
    let mut kernel = open_regular(KERNEL, inputs.kernel)?;
    let kind = detect(&mut kernel, inputs.kernel)?;
    let loaded = match kind {
        KernelKind::Elf => Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))),
        KernelKind::BzImage => {
            BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
        }
    }
    .map_err(|e| BootError::Load(inputs.kernel.to_path_buf(), e))?;

    if inputs.cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong(inputs.cmdline.len()));
    }
    let mut cmdline = inputs.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_START))
        .map_err(BootError::Memory)?;

    let initrd = match inputs.initrd {
        Some(path) => Some(load_initrd(mem, path, &loaded)?),
        None => None,
    };
    match (kind, loaded.pvh_boot_cap) {
        (KernelKind::Elf, PvhBootCapability::PvhEntryPresent(entry)) => {
            pvh::configure(mem, inputs, initrd, entry)
        }
        _ => linux::configure(mem, inputs, initrd, &loaded),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelKind {
    Elf,
    BzImage,
}

const KERNEL: &str = "kernel";
const INITRD: &str = "initrd";

fn open_regular(role: &'static str, path: &Path) -> Result<File, BootError> {
    let file = File::open(path).map_err(|e| BootError::Read(role, path.to_path_buf(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| BootError::Read(role, path.to_path_buf(), e))?;
    if !meta.is_file() {
        return Err(BootError::NotAFile(role, path.to_path_buf()));
    }
    Ok(file)
}

/// Recognises an ELF by its magic and a bzImage by the "HdrS" boot-protocol signature at 0x202.
fn detect(file: &mut File, path: &Path) -> Result<KernelKind, BootError> {
    let read_err = |e| BootError::Read(KERNEL, path.to_path_buf(), e);
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    while filled < head.len() {
        let n = file.read(&mut head[filled..]).map_err(read_err)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelKind::Elf)
    } else if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelKind::BzImage)
    } else {
        Err(BootError::NotAKernel(path.to_path_buf()))
    }
}

/// Places the initrd page-aligned as high as possible below the MMIO gap (and below the
/// 896 MiB bound old kernels need), above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &KernelLoaderResult,
) -> Result<Initrd, BootError> {
    const INITRD_ADDR_MAX: u64 = 0x3800_0000;
    let mut file = open_regular(INITRD, path)?;
    let size = file
        .metadata()
        .map_err(|e| BootError::Read(INITRD, path.to_path_buf(), e))?
        .len();
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let top = (mem.last_addr().raw_value() + 1)
        .min(MMIO_GAP_START)
        .min(INITRD_ADDR_MAX);
    let start = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if start < kernel.kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    let addr = GuestAddress(start);
    let len = usize::try_from(size).map_err(|_| too_large())?;
    let mut slice = mem.get_slice(addr, len).map_err(BootError::Memory)?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::Read(INITRD, path.to_path_buf(), io::Error::other(e)))?;
    Ok(Initrd { addr, size })
}
