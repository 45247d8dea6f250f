//! Progress display for networks training side by side.
//!
//! On a terminal: one `indicatif` bar per network (steps/s with evaluation included, training
//! loss and batch accuracy since the last evaluation, test accuracy). Otherwise (CI,
//! redirected stderr): a plain line per network every tenth evaluation and at the end.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress displays of one run.
#[derive(Debug)]
pub(crate) struct Progress {
    multi: MultiProgress,
    terminal: bool,
}

/// The display of one network.
#[derive(Debug, Clone)]
pub(crate) struct NetProgress {
    bar: ProgressBar,
    name: String,
    terminal: bool,
}

impl Progress {
    /// Displays on stderr; bars only when stderr is a terminal.
    pub(crate) fn new() -> Self {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            terminal,
        }
    }

    /// Adds a display for a network named `name` training `steps` steps.
    pub(crate) fn add(&self, name: &str, steps: u64) -> NetProgress {
        let style =
            ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos:>6}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bar = self.multi.add(
            ProgressBar::new(steps)
                .with_style(style)
                .with_prefix(name.to_owned()),
        );
        NetProgress {
            bar,
            name: name.to_owned(),
            terminal: self.terminal,
        }
    }
}

impl NetProgress {
    /// Moves the bar to `step`.
    pub(crate) fn set_step(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// Shows the latest figures; `loud` asks for a plain line too when not on a terminal.
    pub(crate) fn report(&self, step: u64, loss: f64, train_acc: f64, test_acc: f64, loud: bool) {
        let rate = step as f64 / self.bar.elapsed().as_secs_f64().max(1e-9);
        let msg = format!(
            "{rate:>5.0} steps/s  loss {loss:.4}  batch acc {train_acc:.3}  test acc {test_acc:.4}"
        );
        if !self.terminal && loud {
            eprintln!(
                "{:>6} step {step:>6}: {msg} (evaluation included)",
                self.name
            );
        }
        self.bar.set_message(msg);
    }

    /// Leaves the bar at its final state.
    pub(crate) fn finish(&self) {
        self.bar.finish();
    }
}
