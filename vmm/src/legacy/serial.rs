//! COM1: a vm-superio 16550 whose output goes to svmm's stdout and whose input comes from
//! svmm's stdin, with its interrupt delivered through a KVM irqfd.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::PioDevice;
use crate::self_confine::{self, ThreadRole};
use crate::vm_events::{VmEvent, VmEvents};
use worker::report::one_line;

/// Raises the serial interrupt by writing the irqfd KVM has bound to the UART's GSI.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Guest output sink: svmm's stdout, flushed as the UART asks. A closed stdout must not stop
/// the guest, so the UART never sees write errors.
pub struct ConsoleOut;

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stdout().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stdout().lock().flush();
        Ok(())
    }
}

/// The UART at COM1.
pub struct ConsoleSerial(Serial<IrqTrigger, NoEvents, ConsoleOut>);

impl ConsoleSerial {
    /// A UART that interrupts through `irq`.
    pub fn new(irq: EventFd) -> Self {
        Self(Serial::new(IrqTrigger(irq), ConsoleOut))
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    fn enqueue(&mut self, bytes: &[u8]) -> usize {
        match self.0.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(SerialError::FullFifo) => 0,
            // The bytes were queued; only the interrupt failed, which the guest's polling
            // still covers. Report them as taken.
            Err(_) => bytes.len().min(1),
        }
    }
}

impl PioDevice for ConsoleSerial {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // Cannot truncate: the UART spans eight ports.
        let value = self.0.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&value) = data.first() {
            // Cannot truncate: the UART spans eight ports. Errors are interrupt-delivery
            // failures; the byte itself was handled.
            let _ = self.0.write(offset as u8, value);
        }
    }
}

/// Ctrl-A: the console escape key in raw mode, as in QEMU.
const ESCAPE: u8 = 0x01;

/// Forwards stdin to the UART on its own thread. With `escape` (a raw terminal), Ctrl-A x ends
/// svmm and Ctrl-A Ctrl-A sends one Ctrl-A. At end of input the thread ends and the guest keeps
/// running.
pub struct ConsoleInput;

impl ConsoleInput {
    /// Starts the forwarding thread.
    pub fn spawn(
        serial: Arc<Mutex<ConsoleSerial>>,
        control: VmEvents,
        escape: bool,
    ) -> io::Result<()> {
        thread::Builder::new()
            .name("console-in".into())
            .spawn(move || forward(serial, control, escape))
            .map(|_| ())
    }
}

fn forward(serial: Arc<Mutex<ConsoleSerial>>, control: VmEvents, escape: bool) {
    if let Err(e) = self_confine::enter(ThreadRole::ConsoleInput) {
        control.request(VmEvent::Internal(format!(
            "console input: {}",
            one_line(&e)
        )));
        return;
    }
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 256];
    let mut pending_escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if !escape {
                out.push(b);
            } else if pending_escape {
                pending_escape = false;
                match b {
                    b'x' | b'X' => {
                        control.request(VmEvent::UserQuit);
                        return;
                    }
                    ESCAPE => out.push(ESCAPE),
                    _ => {}
                }
            } else if b == ESCAPE {
                pending_escape = true;
            } else {
                out.push(b);
            }
        }
        let mut rest = &out[..];
        while !rest.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue(rest);
            rest = &rest[taken..];
            if taken == 0 {
                // The guest has not drained the FIFO yet.
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reaches_the_receive_register() {
        let mut uart = ConsoleSerial::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(uart.enqueue(b"hi"), 2);
        let mut b = [0u8];
        uart.read(5, &mut b); // LSR: data ready
        assert_eq!(b[0] & 1, 1);
        uart.read(0, &mut b);
        assert_eq!(b[0], b'h');
    }
}
