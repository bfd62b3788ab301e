//! Line framing for the text protocols (Masimo, Tanita): splits a byte stream into lines ending in LF
//! (a CR before it is dropped), and treats an overlong run without a line end as garbage.

use super::{hex_of, DecodeContext, DecodeEvent, FrameError, StreamDecoder};

/// No device line is longer; a longer run is noise (a wrong baud rate, a binary device on the port).
const MAX_LINE: usize = 512;

#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
    /// Set while skipping the rest of an overlong run up to its line end.
    overlong: bool,
}

impl LineFramer {
    /// The complete lines in `bytes` after what came before; empty lines are skipped.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut lines = Vec::new();
        // Bytes of an overlong run skipped in this chunk, counted as garbage where the run ends or the chunk
        // does, so that a run of megabytes is counted whole.
        let mut skipped = 0;
        let flush = |skipped: &mut usize, lines: &mut Vec<_>| {
            if *skipped > 0 {
                lines.push(Err(FrameError::Garbage {
                    count: std::mem::take(skipped),
                }));
            }
        };
        for &byte in bytes {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.partial);
                if std::mem::take(&mut self.overlong) {
                    flush(&mut skipped, &mut lines);
                    continue;
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.is_empty() {
                    lines.push(Ok(line));
                }
                continue;
            }
            if self.overlong {
                skipped += 1;
                continue;
            }
            self.partial.push(byte);
            if self.partial.len() > MAX_LINE {
                let count = std::mem::take(&mut self.partial).len();
                self.overlong = true;
                lines.push(Err(FrameError::Garbage { count }));
            }
        }
        flush(&mut skipped, &mut lines);
        lines
    }

    /// A line left without its end when the input stops.
    pub fn finish(&mut self) -> Option<FrameError> {
        let partial = std::mem::take(&mut self.partial);
        self.overlong = false;
        (!partial.is_empty()).then(|| FrameError::Truncated {
            have: partial.len(),
            need: partial.len() + 1,
            raw: hex_of(&partial),
        })
    }
}

/// A decoder for a protocol of one measurement per line: the framer plus the protocol's line parser.
pub struct LineDecoder {
    lines: LineFramer,
    parse: fn(&[u8], &DecodeContext<'_>) -> Vec<DecodeEvent>,
}

impl LineDecoder {
    pub fn new(parse: fn(&[u8], &DecodeContext<'_>) -> Vec<DecodeEvent>) -> LineDecoder {
        LineDecoder {
            lines: LineFramer::default(),
            parse,
        }
    }
}

impl StreamDecoder for LineDecoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        let mut events = Vec::new();
        for line in self.lines.feed(bytes) {
            match line {
                Ok(line) => events.extend((self.parse)(&line, context)),
                Err(error) => events.push(DecodeEvent::Rejected(error)),
            }
        }
        events
    }

    fn finish(&mut self) -> Option<FrameError> {
        self.lines.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut framer = LineFramer::default();
        let mut out: Vec<String> = chunks
            .iter()
            .flat_map(|chunk| framer.feed(chunk))
            .map(|line| match line {
                Ok(line) => String::from_utf8_lossy(&line).to_string(),
                Err(FrameError::Garbage { count }) => format!("garbage {count}"),
                Err(other) => format!("{other}"),
            })
            .collect();
        out.extend(framer.finish().map(|e| format!("unfinished {e}")));
        out
    }

    #[test]
    fn framing() {
        assert_eq!(
            lines(&[b"a\r\nb\n", b"\r\n", b"c"]),
            [
                "a",
                "b",
                "unfinished truncated frame: 1 bytes of a frame that needs 2 (bytes 63)"
            ]
        );
        assert_eq!(lines(&[b"ab", b"c\r", b"\nd\n"]), ["abc", "d"]);
        let long = vec![b'x'; 600];
        assert_eq!(
            lines(&[&long, b"\nok\n"]),
            ["garbage 513", "garbage 87", "ok"]
        );
        // Every byte of a long run is counted, in the chunk it came in; the run's end counts too.
        assert_eq!(
            lines(&[&long, &long, b"xx\nok\n"]),
            [
                "garbage 513",
                "garbage 87",
                "garbage 600",
                "garbage 2",
                "ok"
            ]
        );
        assert_eq!(lines(&[&long, b"\n"]), ["garbage 513", "garbage 87"]);
    }
}
