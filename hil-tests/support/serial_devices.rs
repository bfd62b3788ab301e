//! Frames of the serial device families besides Nonin, built as the devices send them, and a Contec
//! CMS50F simulator that holds the "7D 81" dialog, for the pseudo-terminal simulators.

use std::time::{Duration, Instant};

use super::pty::SimulatedPort;

/// A legacy Contec CMS50 (and BerryMed BCI) 5-byte packet.
pub fn contec_legacy_packet(spo2: u8, pulse: u8) -> [u8; 5] {
    [
        0x80 | 0x04,
        0x32,
        0x05 | ((pulse & 0x80) >> 1),
        pulse & 0x7F,
        spo2 & 0x7F,
    ]
}

/// A "7D 81" device message: the type, then the high bits of the payload bytes gathered into byte 1,
/// then the payload bytes with bit 7 set.
pub fn contec_message(kind: u8, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= 7,
        "byte 1 carries the high bits of 7 bytes at most"
    );
    let mut high = 0x80u8;
    let mut message = vec![kind, 0];
    for (index, byte) in payload.iter().enumerate() {
        high |= ((byte >> 7) & 1) << index;
        message.push(0x80 | (byte & 0x7F));
    }
    message[1] = high;
    message
}

/// A "7D 81" live-data message (type 0x01).
pub fn contec_live_message(spo2: u8, pulse: u8) -> Vec<u8> {
    contec_message(0x01, &[0x05, 0x33, 0x16, pulse, spo2, 0xFF, 0xFF])
}

/// The answer to "when did session N start" (`A5`): the date message (0x07) and the time message (0x12).
pub fn contec_session_start(year: u16, month: u8, day: u8, hour: u8, minute: u8) -> Vec<u8> {
    let mut bytes = contec_message(
        0x07,
        &[0, 0, (year / 100) as u8, (year % 100) as u8, month, day],
    );
    bytes.extend(contec_message(0x12, &[0, 0, hour, minute, 0, 0]));
    bytes
}

/// A recorded session's data (the answer to `A6`): type 0x0F messages of three SpO2/pulse pairs each,
/// the last padded with "no reading" pairs.
pub fn contec_session_data(samples: &[(u8, u8)]) -> Vec<u8> {
    samples
        .chunks(3)
        .flat_map(|chunk| {
            let mut payload = Vec::new();
            for index in 0..3 {
                let (spo2, pulse) = chunk.get(index).copied().unwrap_or((0x7F, 0xFF));
                payload.extend([spo2, pulse]);
            }
            contec_message(0x0F, &payload)
        })
        .collect()
}

/// A Masimo Rad-8 ASCII 2 trend line.
pub fn masimo_line(spo2: u8, pulse: u8) -> Vec<u8> {
    format!("09/21/08 09:56:12 SpO2={spo2:03} PR={pulse:03} PI=04.69 EXC=800:SET\r\n").into_bytes()
}

/// A Tanita line with the inferred checksum, as a BC-418 sends it after a measurement.
pub fn tanita_line(weight_kg: f64, fat_percent: f64) -> Vec<u8> {
    let body = format!(
        "{{0,16,~0,1,~1,1,~2,1,MO,\"BC-418\",Hm,180.0,Wk,{weight_kg:.1},MI,24.7,FW,{fat_percent:.1},fW,18.0,ZF,512,"
    );
    let sum = body.bytes().fold(0u8, |s, b| s.wrapping_add(b));
    format!("{body}CS,{sum:02X}\r\n").into_bytes()
}

/// A session a simulated Contec recorded: its start (device wall time) and one (SpO2, pulse) a second.
#[derive(Clone)]
pub struct StoredSession {
    pub start: (u16, u8, u8, u8, u8),
    pub samples: Vec<(u8, u8)>,
}

/// A Contec CMS50F that answers the "7D 81" commands as the real device does: it streams only after the
/// start command and stops when keep-alives stop coming (`forgetful`: once, it stops after a few seconds
/// whatever the host does, as a flaky firmware might), and it serves the sessions it stored.
pub struct Contec {
    pub port: SimulatedPort,
    streaming: bool,
    last_keep_alive: Instant,
    /// Every byte the host sent.
    pub received: Vec<u8>,
    pub forgetful: bool,
    pub sessions: Vec<StoredSession>,
    /// Bytes of a command the host has not finished sending.
    partial: Vec<u8>,
    /// The sessions whose data the host asked for, in order.
    pub downloads: Vec<u8>,
    /// The next download loses a byte in the middle, as a noisy cable might.
    pub damage_next_download: bool,
}

impl Contec {
    pub fn new(port: SimulatedPort) -> Contec {
        Contec {
            port,
            streaming: false,
            last_keep_alive: Instant::now(),
            received: Vec::new(),
            forgetful: false,
            sessions: Vec::new(),
            partial: Vec::new(),
            downloads: Vec::new(),
            damage_next_download: false,
        }
    }

    fn answer(&mut self, command: [u8; 9]) {
        let parameter = command[4] & 0x7F;
        match command[2] {
            0xA1 => {
                self.streaming = true;
                self.last_keep_alive = Instant::now();
            }
            0xAF if !self.forgetful => self.last_keep_alive = Instant::now(),
            0xA2 => {
                self.streaming = false;
                self.port.write(&contec_message(0x0C, &[]));
            }
            0xA7 => self.port.write(&contec_message(0x0C, &[])),
            0xA3 => self
                .port
                .write(&contec_message(0x0A, &[0, self.sessions.len() as u8])),
            0xA5 => {
                if let Some(session) = self.sessions.get(usize::from(parameter)) {
                    let (year, month, day, hour, minute) = session.start;
                    self.port
                        .write(&contec_session_start(year, month, day, hour, minute));
                }
            }
            0xA4 => {
                if let Some(session) = self.sessions.get(usize::from(parameter)) {
                    let length = (session.samples.len() as u32 * 2).to_le_bytes();
                    self.port.write(&contec_message(
                        0x08,
                        &[0, parameter, length[0], length[1], length[2], length[3]],
                    ));
                }
            }
            0xA6 => {
                if let Some(session) = self.sessions.get(usize::from(parameter)).cloned() {
                    self.downloads.push(parameter);
                    let mut data = contec_session_data(&session.samples);
                    if std::mem::take(&mut self.damage_next_download) {
                        data.remove(data.len() / 2);
                    }
                    self.port.write(&data);
                }
            }
            _ => {}
        }
    }

    /// Answers what the host sent in the last 50 ms, and sends one live message while streaming.
    pub fn serve(&mut self, spo2: u8, pulse: u8) {
        let bytes = self.port.read_for(Duration::from_millis(50));
        self.received.extend(&bytes);
        self.partial.extend(bytes);
        while let Some(at) = self.partial.windows(2).position(|w| w == [0x7D, 0x81]) {
            if self.partial.len() < at + 9 {
                self.partial.drain(..at);
                break;
            }
            let command: [u8; 9] = self.partial[at..at + 9].try_into().unwrap();
            self.partial.drain(..at + 9);
            self.answer(command);
        }
        // The real device gives up after about 30 s without a keep-alive; the simulator after 8 s (3 s
        // when forgetful), so the test does not take minutes.
        let patience = if self.forgetful { 3 } else { 8 };
        if self.streaming && self.last_keep_alive.elapsed() > Duration::from_secs(patience) {
            self.streaming = false;
            // The glitch happens once; after a restart the device behaves.
            self.forgetful = false;
        }
        if self.streaming {
            self.port.write(&contec_live_message(spo2, pulse));
        }
    }

    /// Serves for `duration`, one live sample a second while streaming, or until `done` holds.
    pub fn serve_until(
        &mut self,
        duration: Duration,
        spo2: u8,
        pulse: u8,
        mut done: impl FnMut() -> bool,
    ) {
        let started = Instant::now();
        while started.elapsed() < duration && !done() {
            let second = Instant::now();
            while second.elapsed() < Duration::from_secs(1) {
                self.serve(spo2, pulse);
            }
        }
    }
}
