//! Frames of the serial device families besides Nonin, built as the devices send them, for the
//! pseudo-terminal simulators.

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
