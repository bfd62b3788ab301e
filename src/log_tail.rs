//! The last log lines at info level and above, kept in memory for the fleet's diagnostics bundle. Readings
//! are never logged at info level, so the lines hold none.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Lines kept; older ones are dropped.
const KEPT_LINES: usize = 200;
/// A longer line is cut: a diagnostics bundle must fit in one MQTT message.
const MAX_LINE: usize = 600;

static LINES: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The layer that keeps the lines; `cli::run` installs it beside the formatter.
pub struct TailLayer;

impl<S: Subscriber> tracing_subscriber::Layer<S> for TailLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() > Level::INFO {
            return;
        }
        let mut line = format!(
            "{} {} {}:",
            crate::clock::now_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            metadata.level(),
            metadata.target()
        );
        event.record(&mut Fields(&mut line));
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let mut lines = LINES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The kept lines, oldest first.
pub fn lines() -> Vec<String> {
    let lines = LINES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    lines.iter().cloned().collect()
}
