//! Board I/O for petal, written against embedded-hal 1.0 and embedded-io so that it runs on any
//! board with a HAL (the Linux boards' `petal listen`, a Cortex-M's firmware) and is tested on
//! the host with embedded-hal-mock: predictions out on GPIO lines, one line per label
//! ([`LabelLines`], [`PinLines`]), and text lines in from a serial port with one answer line
//! each ([`answer_lines`]). `no_std`.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use core::fmt::{Display, Write as _};

use embedded_hal::digital::OutputPin;
use embedded_io::{Read, Write};

/// One output line per label: showing a prediction drives its line high and every other low.
#[derive(Debug)]
pub struct LabelLines<P, const N: usize> {
    pins: [P; N],
}

/// Why a prediction could not be shown.
#[derive(Debug, PartialEq, Eq)]
pub enum ShowError<E> {
    /// The label index has no line.
    NoLine {
        /// The index asked for.
        index: usize,
        /// Lines available.
        lines: usize,
    },
    /// A pin failed.
    Pin(E),
}

impl<P: OutputPin, const N: usize> LabelLines<P, N> {
    /// Takes the pins, label `i` on `pins[i]`, and drives them all low.
    pub fn new(mut pins: [P; N]) -> Result<Self, P::Error> {
        for p in pins.iter_mut() {
            p.set_low()?;
        }
        Ok(LabelLines { pins })
    }

    /// Shows label `index`: its line high, the others low (lowered first, so two lines are never
    /// high together).
    pub fn show(&mut self, index: usize) -> Result<(), ShowError<P::Error>> {
        PinLines(&mut self.pins).show(index)
    }

    /// Gives the pins back.
    pub fn release(self) -> [P; N] {
        self.pins
    }
}

/// What shows a prediction: a line per label, or nothing.
pub trait Indicator {
    /// A pin's error.
    type Error: core::fmt::Debug;
    /// Shows label `index`.
    fn show(&mut self, index: usize) -> Result<(), Self::Error>;
}

impl<P: OutputPin, const N: usize> Indicator for LabelLines<P, N> {
    type Error = ShowError<P::Error>;
    fn show(&mut self, index: usize) -> Result<(), Self::Error> {
        LabelLines::show(self, index)
    }
}

/// [`LabelLines`] over pins counted at run time: label `i` on `pins[i]`.
#[derive(Debug)]
pub struct PinLines<'a, P>(pub &'a mut [P]);

impl<P: OutputPin> Indicator for PinLines<'_, P> {
    type Error = ShowError<P::Error>;
    fn show(&mut self, index: usize) -> Result<(), Self::Error> {
        let lines = self.0.len();
        if index >= lines {
            return Err(ShowError::NoLine { index, lines });
        }
        for (i, p) in self.0.iter_mut().enumerate() {
            if i != index {
                p.set_low().map_err(ShowError::Pin)?;
            }
        }
        self.0[index].set_high().map_err(ShowError::Pin)
    }
}

/// No lines: predictions go to the serial port only.
#[derive(Debug)]
pub struct NoLines;

impl Indicator for NoLines {
    type Error = core::convert::Infallible;
    fn show(&mut self, _: usize) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A classifier's answer for one text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    /// The label's index.
    pub index: usize,
    /// Its probability.
    pub score: f32,
}

/// Why [`answer_lines`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum LoopError<S, I> {
    /// The serial port failed.
    Serial(S),
    /// A line could not be driven.
    Lines(I),
}

/// Reads text lines from `serial` until it ends, and answers each with one line, in order:
/// `label<TAB>score` (the format of `petal classify`, score to four decimals) after showing the
/// label on `lines`, or `error<TAB>message` for a line that is not UTF-8, is longer than `buf`,
/// or that `classify` refuses. `\r\n` endings are accepted; an empty line is classified as the
/// empty text.
pub fn answer_lines<S, I, F, E, L>(
    serial: &mut S,
    lines: &mut I,
    buf: &mut [u8],
    labels: &[L],
    mut classify: F,
) -> Result<(), LoopError<S::Error, I::Error>>
where
    S: Read + Write,
    I: Indicator,
    F: FnMut(&str) -> Result<Answer, E>,
    E: Display,
    L: AsRef<str>,
{
    let mut len = 0;
    // Bytes of a line longer than `buf`, dropped up to its end.
    let mut overflow = false;
    let mut chunk = [0u8; 64];
    loop {
        let n = serial.read(&mut chunk).map_err(LoopError::Serial)?;
        if n == 0 {
            // A last line without its newline is answered too.
            if len > 0 || overflow {
                let line = core::mem::take(&mut len);
                answer(serial, lines, &buf[..line], overflow, labels, &mut classify)?;
            }
            return serial.flush().map_err(LoopError::Serial);
        }
        for &b in &chunk[..n] {
            if b == b'\n' {
                let mut line = &buf[..len];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                answer(serial, lines, line, overflow, labels, &mut classify)?;
                len = 0;
                overflow = false;
            } else if len < buf.len() {
                buf[len] = b;
                len += 1;
            } else {
                overflow = true;
            }
        }
    }
}

/// One line's answer.
fn answer<S, I, F, E, L>(
    serial: &mut S,
    lines: &mut I,
    line: &[u8],
    overflow: bool,
    labels: &[L],
    classify: &mut F,
) -> Result<(), LoopError<S::Error, I::Error>>
where
    S: Write,
    I: Indicator,
    F: FnMut(&str) -> Result<Answer, E>,
    E: Display,
    L: AsRef<str>,
{
    let mut out = LineBuf::new();
    match (overflow, core::str::from_utf8(line)) {
        (true, _) => {
            let _ = write!(out, "error\tline longer than {} bytes", line.len());
        }
        (false, Err(_)) => {
            let _ = write!(out, "error\tline is not UTF-8");
        }
        (false, Ok(text)) => match classify(text) {
            Ok(a) => match labels.get(a.index) {
                Some(label) => {
                    lines.show(a.index).map_err(LoopError::Lines)?;
                    let _ = write!(out, "{}\t{:.4}", label.as_ref(), a.score);
                }
                None => {
                    let _ = write!(out, "error\tlabel {} has no name", a.index);
                }
            },
            Err(e) => {
                let _ = write!(out, "error\t{e}");
            }
        },
    }
    out.push_newline();
    serial.write_all(out.as_bytes()).map_err(LoopError::Serial)
}

/// One answer line, cut at its capacity (a label or message longer than that is shortened).
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    fn new() -> Self {
        LineBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push_newline(&mut self) {
        let at = self.len.min(self.buf.len() - 1);
        self.buf[at] = b'\n';
        self.len = at + 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Room for the newline is kept; characters are never split.
        let room = self.buf.len() - 1 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

    #[test]
    fn one_line_high_per_prediction() {
        let a = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let b = Mock::new(&[T::set(State::Low), T::set(State::Low), T::set(State::High)]);
        let mut lines = LabelLines::new([a, b]).unwrap();
        lines.show(0).unwrap();
        lines.show(1).unwrap();
        assert_eq!(lines.show(2), Err(ShowError::NoLine { index: 2, lines: 2 }));
        for mut p in lines.release() {
            p.done();
        }
    }

    /// A serial port in memory: bytes to read, bytes written.
    struct Port<'a> {
        input: &'a [u8],
        output: [u8; 512],
        written: usize,
    }

    impl embedded_io::ErrorType for Port<'_> {
        type Error = core::convert::Infallible;
    }

    impl Read for Port<'_> {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            // Three bytes at a time, so lines straddle reads.
            let n = buf.len().min(self.input.len()).min(3);
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }

    impl Write for Port<'_> {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.output[self.written..self.written + buf.len()].copy_from_slice(buf);
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[test]
    fn every_line_gets_one_answer_and_its_label_lights() {
        // "ham" for texts with no digit, "spam" otherwise; a text "boom" is refused.
        let classify = |t: &str| match t {
            "boom" => Err("the model refused"),
            t if t.chars().any(|c| c.is_ascii_digit()) => Ok(Answer {
                index: 1,
                score: 0.875,
            }),
            _ => Ok(Answer {
                index: 0,
                score: 0.5,
            }),
        };
        let mut port = Port {
            input: b"hello\r\ncall 0900 now\nboom\n\xff\xfe\nabcdefghijklmnopqrstuvwxyz\n\nlast",
            output: [0; 512],
            written: 0,
        };
        // ham, spam, (refused: no change), (not UTF-8), (too long), ham (empty line), ham.
        let ham = Mock::new(&[
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::High),
        ]);
        let spam = Mock::new(&[
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::Low),
        ]);
        let mut pins = [ham, spam];
        let mut buf = [0u8; 16];
        answer_lines(
            &mut port,
            &mut PinLines(&mut pins),
            &mut buf,
            &["ham", "spam"],
            classify,
        )
        .unwrap();
        let out = core::str::from_utf8(&port.output[..port.written]).unwrap();
        assert_eq!(
            out,
            "ham\t0.5000\nspam\t0.8750\nerror\tthe model refused\nerror\tline is not UTF-8\n\
             error\tline longer than 16 bytes\nham\t0.5000\nham\t0.5000\n"
        );
        for p in pins.iter_mut() {
            p.done();
        }
    }
}
