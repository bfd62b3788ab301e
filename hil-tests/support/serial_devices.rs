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

/// A "7D 81" live-data message (type 0x01), high bits gathered into byte 1.
pub fn contec_live_message(spo2: u8, pulse: u8) -> [u8; 9] {
    let payload = [0x05u8, 0x33, 0x16, pulse, spo2, 0xFF, 0xFF];
    let mut high = 0x80u8;
    let mut message = [0u8; 9];
    message[0] = 0x01;
    for (index, byte) in payload.iter().enumerate() {
        high |= ((byte >> 7) & 1) << index;
        message[index + 2] = 0x80 | (byte & 0x7F);
    }
    message[1] = high;
    message
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
