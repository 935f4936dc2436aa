//! A classic-BPF interpreter for the instructions seccompiler emits, so tests can ask a
//! compiled program what it does with a syscall without installing it.

use seccompiler::sock_filter;

/// `SECCOMP_RET_*` action values (the high 16 bits of a return value).
pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ACTION_FULL: u32 = 0xffff_0000;

/// The kernel's `struct seccomp_data`.
#[derive(Debug, Clone, Copy)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

impl SeccompData {
    /// An x86_64 call of `nr` with `args`.
    pub fn x86_64(nr: i64, args: [u64; 6]) -> Self {
        SeccompData {
            nr: i32::try_from(nr).unwrap(),
            arch: crate::sigsys::AUDIT_ARCH_X86_64,
            instruction_pointer: 0,
            args,
        }
    }

    /// The 32-bit word at byte `offset`, as the kernel's `BPF_LD | BPF_W | BPF_ABS` reads it.
    fn word(&self, offset: u32) -> u32 {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend(self.nr.to_ne_bytes());
        bytes.extend(self.arch.to_ne_bytes());
        bytes.extend(self.instruction_pointer.to_ne_bytes());
        for arg in self.args {
            bytes.extend(arg.to_ne_bytes());
        }
        let at = offset as usize;
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }
}

/// Runs `program` on `data` and returns the action part of its verdict.
pub fn run(program: &[sock_filter], data: &SeccompData) -> u32 {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = &program[pc];
        let (class, op) = (insn.code & 0x07, insn.code & 0xf0);
        pc += 1;
        match class {
            // BPF_LD | BPF_W | BPF_ABS
            0x00 => {
                assert_eq!(insn.code, 0x20, "unsupported load {insn:?}");
                acc = data.word(insn.k);
            }
            // BPF_ALU | BPF_AND | BPF_K
            0x04 => {
                assert_eq!(op, 0x50, "unsupported ALU op {insn:?}");
                acc &= insn.k;
            }
            // BPF_JMP | <op> | BPF_K
            0x05 => {
                assert_eq!(insn.code & 0x08, 0, "only BPF_K jumps: {insn:?}");
                let taken = match op {
                    0x00 => {
                        pc += insn.k as usize;
                        continue;
                    }
                    0x10 => acc == insn.k,
                    0x20 => acc > insn.k,
                    0x30 => acc >= insn.k,
                    0x40 => acc & insn.k != 0,
                    _ => panic!("unsupported jump {insn:?}"),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            // BPF_RET | BPF_K
            0x06 => return insn.k & RET_ACTION_FULL,
            _ => panic!("unsupported instruction {insn:?}"),
        }
    }
}
