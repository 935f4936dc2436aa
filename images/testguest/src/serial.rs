//! COM1 (16550 at 0x3f8), polled. Output lines are `testguest: ...\n`, written by `say!`.

use crate::port::{inb, outb};
use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;
const DATA: u16 = COM1; // RBR / THR (DLL while LCR.DLAB)
const IER: u16 = COM1 + 1; // (DLM while LCR.DLAB)
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;

const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;

/// Programs 115200 8N1 with interrupts off.
///
/// The FIFO control register is deliberately left alone: QEMU's 16550 flushes its receive
/// FIFO whenever the FIFO-enable bit changes, which would drop input the host delivered
/// before the guest started (e.g. `echo hi | qemu ...`). With the FIFO off the host hands
/// over one byte at a time as the guest reads them, so nothing is lost; polled output does
/// not need a FIFO either.
pub fn init() {
    outb(IER, 0x00); // no interrupts
    outb(LCR, 0x80); // DLAB: divisor follows
    outb(DATA, 0x01); // divisor 1 = 115200 baud
    outb(IER, 0x00);
    outb(LCR, 0x03); // 8 data bits, no parity, 1 stop bit
    outb(MCR, 0x03); // DTR | RTS, OUT2 off (no interrupts)
}

pub fn write_byte(byte: u8) {
    while inb(LSR) & LSR_THR_EMPTY == 0 {}
    outb(DATA, byte);
}

pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

/// One received byte, if the UART has one.
pub fn try_read() -> Option<u8> {
    if inb(LSR) & LSR_DATA_READY != 0 {
        Some(inb(DATA))
    } else {
        None
    }
}

/// `core::fmt` sink for the serial port.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Writes one output line: `testguest: <args>\n`.
pub fn say(args: fmt::Arguments) {
    write_bytes(b"testguest: ");
    // Writing to `Serial` never fails; a failing `Display` impl just ends the line early.
    let _ = Serial.write_fmt(args);
    write_byte(b'\n');
}

/// `say!("...", args)` prints `testguest: ...` and a newline.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::serial::say(format_args!($($arg)*)) };
}
