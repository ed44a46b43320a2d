//! Progress of one long phase on stderr: a bar when stderr is a terminal (indicatif), a line
//! every few seconds otherwise (logs, CI). Messages said meanwhile go above the bar.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Phase<'a> {
    what: String,
    unit: String,
    len: u64,
    bar: Option<ProgressBar>,
    said: Instant,
    progress: &'a dyn Fn(&str),
}

impl<'a> Phase<'a> {
    /// `what` counts up to `len` `unit`s.
    pub fn new(what: &str, len: u64, unit: &str, progress: &'a dyn Fn(&str)) -> Phase<'a> {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{elapsed}})"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Phase {
            what: what.to_string(),
            unit: unit.to_string(),
            len,
            bar,
            said: Instant::now(),
            progress,
        }
    }

    pub fn set(&mut self, pos: u64) {
        self.set_with(pos, String::new);
    }

    /// Also say `detail` (e.g. counts) beside the position.
    pub fn set_with(&mut self, pos: u64, detail: impl FnOnce() -> String) {
        match &self.bar {
            Some(b) => {
                if b.position() != pos {
                    b.set_message(format!("{} {}", self.what, detail()));
                }
                b.set_position(pos);
            }
            None if self.said.elapsed() > Duration::from_secs(5) => {
                (self.progress)(&format!(
                    "  {}: {pos} of {} {} {}",
                    self.what,
                    self.len,
                    self.unit,
                    detail()
                ));
                self.said = Instant::now();
            }
            None => {}
        }
    }

    /// Say `m` without breaking the bar.
    pub fn say(&self, m: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| (self.progress)(m)),
            None => (self.progress)(m),
        }
    }
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
