//! `echo`: reads one line from the console and prints it back. Checks that host input reaches
//! the guest through the serial port.

use crate::cmdline::MmioDevice;
use crate::fig;
use crate::say;
use crate::serial;
use crate::tests::{Ctx, Outcome};

const MAX_LINE: usize = 128;

/// Needs no device: always in the default set.
pub fn applies(_devices: &[MmioDevice]) -> bool {
    true
}

pub fn run(ctx: &Ctx) -> Outcome {
    say!("echo ready");
    let timeout_ms = ctx.params.echo_timeout_ms;
    let deadline = ctx.timer.deadline_ms(timeout_ms);
    let mut line = [0u8; MAX_LINE];
    let mut len = 0;
    loop {
        let Some(byte) = serial::try_read() else {
            if ctx.timer.expired(deadline) {
                return Err(fig!("timeout"));
            }
            continue;
        };
        match byte {
            // The '\n' of a "\r\n" that ended an earlier line.
            b'\n' if len == 0 => continue,
            b'\r' | b'\n' => break,
            _ if len < MAX_LINE => {
                line[len] = byte;
                len += 1;
            }
            // Longer lines are cut at MAX_LINE bytes; the rest is read and dropped.
            _ => {}
        }
    }
    let mut figures = fig!("line=");
    figures.push_bytes(&line[..len]);
    Ok(figures)
}
