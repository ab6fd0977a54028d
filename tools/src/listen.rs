//! `petal listen`: text lines from a serial port, one `label<TAB>score` line back for each, and
//! the label's GPIO line raised, through the board logic of `targets/board` (generic over
//! embedded-hal and embedded-io) with Linux's drivers: the serial port through `serialport`,
//! GPIO through the character device (linux-embedded-hal's `CdevPin`).

use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use petal_adapt::adapter::Adapter;
use petal_board::{answer_lines, Answer, LoopError, NoLines, PinLines};
use petal_runtime::pipeline::Model;

/// Longest text line taken; longer ones are answered with an error line.
const MAX_LINE: usize = 16 * 1024;

/// A serial port as embedded-io's reader and writer: waits through read timeouts, and takes a
/// hang-up (the other end closed, EIO on a pseudo-terminal) as the end of input.
struct Serial {
    port: Box<dyn serialport::SerialPort>,
    /// The other end hung up: nothing more to flush.
    hung_up: bool,
}

impl embedded_io::ErrorType for Serial {
    type Error = std::io::Error;
}

impl embedded_io::Read for Serial {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        loop {
            match self.port.read(buf) {
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::Interrupted => {
                }
                // EIO, or serialport's POLLHUP: the other end hung up.
                Err(e) if e.raw_os_error() == Some(5) || e.kind() == ErrorKind::BrokenPipe => {
                    self.hung_up = true;
                    return Ok(0);
                }
                r => return r,
            }
        }
    }
}

impl embedded_io::Write for Serial {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.port.write(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        if self.hung_up {
            return Ok(());
        }
        self.port.flush()
    }
}

/// Where the predictions go besides the serial port: a GPIO chip and one line offset per label.
#[derive(Debug)]
pub struct Gpio<'a> {
    /// The chip's character device (`/dev/gpiochip0`).
    pub chip: &'a Path,
    /// Line offsets, label `i` on `lines[i]`.
    pub lines: &'a [u32],
}

/// Answers the lines of `serial` until it closes.
pub fn listen(
    model: &Model,
    adapter: Option<&Adapter>,
    labels: &[String],
    serial: &Path,
    baud: u32,
    gpio: Option<Gpio<'_>>,
) -> Result<()> {
    let port = serialport::new(serial.to_string_lossy(), baud)
        .timeout(Duration::from_secs(3600))
        .open()
        .with_context(|| format!("{}: cannot open the serial port", serial.display()))?;
    let mut io = Serial {
        port,
        hung_up: false,
    };
    let classify = |text: &str| -> Result<Answer, String> {
        let p = crate::adapt_cmd::predict(model, adapter, &[text]).map_err(|e| format!("{e:#}"))?;
        let p = p.into_iter().next().ok_or("no prediction")?;
        Ok(Answer {
            index: p.index,
            score: p.score,
        })
    };
    let mut buf = vec![0u8; MAX_LINE];
    match gpio {
        None => {
            eprintln!("petal listen: reading {}", serial.display());
            answer_lines(&mut io, &mut NoLines, &mut buf, labels, classify)
                .map_err(|e| loop_error(e, serial))
        }
        Some(g) => {
            let mut pins = gpio_pins(&g, labels.len())?;
            eprintln!(
                "petal listen: reading {}, labels on {} lines {:?}",
                serial.display(),
                g.chip.display(),
                g.lines
            );
            answer_lines(
                &mut io,
                &mut PinLines(&mut pins),
                &mut buf,
                labels,
                classify,
            )
            .map_err(|e| loop_error(e, serial))
        }
    }
}

fn loop_error<I: std::fmt::Debug>(e: LoopError<std::io::Error, I>, serial: &Path) -> anyhow::Error {
    match e {
        LoopError::Serial(e) => anyhow!("{}: {e}", serial.display()),
        LoopError::Lines(e) => anyhow!("GPIO: {e:?}"),
    }
}

#[cfg(target_os = "linux")]
fn gpio_pins(g: &Gpio<'_>, labels: usize) -> Result<Vec<linux_embedded_hal::CdevPin>> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    if g.lines.len() != labels {
        anyhow::bail!(
            "--lines: {} line offsets for {} labels (one per label, in label order)",
            g.lines.len(),
            labels
        );
    }
    let mut chip = Chip::new(g.chip)
        .with_context(|| format!("{}: cannot open the GPIO chip", g.chip.display()))?;
    g.lines
        .iter()
        .map(|&o| {
            let line = chip
                .get_line(o)
                .with_context(|| format!("{}: line {o}", g.chip.display()))?;
            let handle = line
                .request(LineRequestFlags::OUTPUT, 0, "petal")
                .with_context(|| format!("{}: line {o} cannot be an output", g.chip.display()))?;
            linux_embedded_hal::CdevPin::new(handle)
                .with_context(|| format!("{}: line {o}", g.chip.display()))
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn gpio_pins(g: &Gpio<'_>, _: usize) -> Result<Vec<NoPin>> {
    anyhow::bail!(
        "{}: GPIO through the character device needs Linux",
        g.chip.display()
    )
}

/// No GPIO outside Linux.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub enum NoPin {}
