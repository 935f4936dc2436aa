//! svmm's integration harness: everything the `harness = false` binaries in `tests/tests/` share.
//!
//! | module      | owns                                                                    |
//! |-------------|-------------------------------------------------------------------------|
//! | [`paths`]   | the repository root, guest artefacts in `images/out/`, temporary dirs    |
//! | [`backend`] | which VMM runs a test guest: svmm or QEMU                              |
//! | [`confinement`] | a device worker of any kind checked from `/proc`; svmm as the unprivileged test user |
//! | [`binary`]  | finding or building the `svmm` binary (once per test process)            |
//! | [`disk`]    | disk images for the blk trials: the test guest's pattern, expected images |
//! | [`host`]    | what this host offers: `/dev/kvm`, hardware virtualisation, QEMU         |
//! | [`mode`]    | sandboxed and in-process, for trials that run in both                    |
//! | [`layering`] | a crate's module import graph and its cycles (`tests/tests/layering.rs`) |
//! | [`netns`]   | network namespaces, taps and veths for the net trials; the running peer  |
//! | [`netpeer`] | `svmm-netpeer`, the net tests' peer inside their network namespace      |
//! | [`procfs`]  | a live process seen from `/proc`: children, status, namespaces, fds      |
//! | [`vm`]      | the [`TestVm`] builder and the two backends (svmm, QEMU microvm)         |
//! | [`sandbox_report`] | reading `svmm --print-sandbox`: sections, command lines, allowed calls |
//! | [`running`] | a started VM: its pid, its output as it arrives, stdin, kill, wait      |
//! | [`output`]  | [`VmOutput`], what a finished VM left behind, and assertions on it       |
//! | [`share`]   | shared directories for the virtio-fs trials: layout, canary, tree, inotify |
//! | [`suite`]   | a thin libtest-mimic wrapper: ignored trials always carry their reason   |
//! | [`weston`]  | a headless weston on a private socket: globals, screenshots, its connections |
//! | [`bench`]   | the benchmark harness (`svmm-bench`, `tests/bench.sh`): svmm sandboxed vs in-process vs QEMU |
//!
//! Typical use:
//!
//! ```no_run
//! use tests::{paths, TestVm};
//! let out = TestVm::svmm(paths::artefact("testguest.elf"))
//!     .cmdline("testguest.run=echo")
//!     .stdin_after_line("testguest: echo ready", "hello\n")
//!     .run()
//!     .unwrap();
//! out.assert_line("testguest: echo ok line=hello");
//! assert_eq!(out.testguest_summary(), Some((1, 0)));
//! ```

pub mod backend;
pub mod bench;
pub mod binary;
pub mod confinement;
pub mod disk;
pub mod host;
pub mod hugepages;
pub mod layering;
pub mod mode;
pub mod netns;
pub mod netpeer;
pub mod output;
pub mod paths;
pub mod procfs;
pub mod running;
pub mod sandbox_report;
pub mod share;
pub mod suite;
pub mod vm;
pub mod weston;

pub use host::{has_hw_virt, require_kvm};
pub use output::{VmError, VmOutput};
pub use running::RunningVm;
pub use suite::Suite;
pub use vm::{Backend, TestVm};
