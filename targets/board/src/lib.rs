//! Board I/O for petal: predictions out on GPIO lines, one line per label, written against
//! embedded-hal 1.0's `OutputPin` so it runs on any board with a HAL and is tested on the host
//! with embedded-hal-mock. `no_std`.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use embedded_hal::digital::OutputPin;

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
        if index >= N {
            return Err(ShowError::NoLine { index, lines: N });
        }
        for (i, p) in self.pins.iter_mut().enumerate() {
            if i != index {
                p.set_low().map_err(ShowError::Pin)?;
            }
        }
        self.pins[index].set_high().map_err(ShowError::Pin)
    }

    /// Gives the pins back.
    pub fn release(self) -> [P; N] {
        self.pins
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
}
