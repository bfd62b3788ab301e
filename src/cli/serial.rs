//! `vitalsd serial`: the serial ports present, what they are, and which protocol the hub believes each
//! speaks, from a table of USB ids and, for ports not in use, a passive listen of a few seconds.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::catalog::{Link, Listen, PROTOCOLS};
use crate::config::Config;
use crate::decode::{DecodeContext, DecodeEvent, LineSettings, Parity, Protocol};
use crate::serial::ports::{self, PortInfo, PortLocation, Roots};

/// Protocols a port can be recognised by without sending it anything, grouped by line settings (one
/// listen per group), in catalogue order.
fn listen_groups() -> Vec<(LineSettings, Vec<Protocol>)> {
    let mut groups: Vec<(LineSettings, Vec<Protocol>)> = Vec::new();
    for row in &PROTOCOLS {
        let Link::Serial(serial) = &row.link else {
            continue;
        };
        if serial.listen != Listen::Passive {
            continue;
        }
        match groups.iter_mut().find(|(line, _)| *line == serial.line) {
            Some((_, protocols)) => protocols.push(row.protocol),
            None => groups.push((serial.line, vec![row.protocol])),
        }
    }
    groups
}

/// Reads the port for `duration` at one line setting; `None` when it cannot be opened.
fn listen(path: &Path, baud: u32, parity: Parity, duration: Duration) -> Option<Vec<u8>> {
    let mut port = serialport::new(path.to_string_lossy(), baud)
        .parity(crate::serial::line_parity(parity))
        .timeout(Duration::from_millis(200))
        .open()
        .ok()?;
    let deadline = Instant::now() + duration;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 1024];
    while Instant::now() < deadline {
        match port.read(&mut buffer) {
            Ok(count) => bytes.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    Some(bytes)
}

/// The protocol whose decoder finds readings in `bytes` and rejects nothing, if exactly one does best.
fn recognise(bytes: &[u8], candidates: &[Protocol]) -> Option<Protocol> {
    let context = DecodeContext::trusted(crate::clock::now_utc(), &chrono::Local);
    candidates
        .iter()
        .filter_map(|protocol| {
            let mut decoder = protocol.new_decoder();
            let mut events = decoder.feed(bytes, &context);
            events.extend(decoder.finish().map(DecodeEvent::Rejected));
            let readings = events
                .iter()
                .filter(|e| matches!(e, DecodeEvent::Reading(_)))
                .count();
            let rejected = events.len() - readings;
            (readings > 0 && rejected * 4 <= readings).then_some((readings, *protocol))
        })
        .max_by_key(|(readings, _)| *readings)
        .map(|(_, protocol)| protocol)
}

fn configured(config: Option<&Config>, port: &PortInfo, roots: &Roots) -> Option<String> {
    config?.serial.iter().find_map(|entry| {
        let matches = match &entry.path {
            PortLocation::Path(path) => {
                let resolved = std::fs::canonicalize(path).ok();
                resolved.is_some() && resolved == std::fs::canonicalize(&port.device).ok()
            }
            location => location.resolve(roots).is_some_and(|found| {
                std::fs::canonicalize(found).ok() == std::fs::canonicalize(&port.device).ok()
            }),
        };
        matches.then(|| entry.device_id.clone())
    })
}

/// `vitalsd serial [--config PATH] [--listen SECONDS] [--json]`.
pub fn serial(config_path: Option<&Path>, listen_seconds: u64, json: bool) -> ExitCode {
    let config = match config_path.map(super::load_config) {
        Some(Ok(config)) => Some(config),
        Some(Err(code)) => return code,
        None => None,
    };
    let roots = Roots::from_environment();
    let ports = ports::list(&roots);
    if ports.is_empty() && !json {
        println!("No serial ports found. Plug the device's cable in and run this again.");
    }
    for port in ports {
        let known = port
            .vid
            .zip(port.pid)
            .and_then(|(vid, pid)| ports::known_adapter(vid, pid));
        let in_use = configured(config.as_ref(), &port, &roots);
        let mut protocol = known.and_then(|(_, protocol)| protocol);
        let mut how = protocol.map(|_| "usb id");
        // A port the daemon reads is not listened to: two readers would steal each other's bytes.
        if in_use.is_none() && listen_seconds > 0 {
            let path = port.by_id.clone().unwrap_or_else(|| port.device.clone());
            for (line, candidates) in listen_groups() {
                let duration = Duration::from_secs(listen_seconds);
                let Some(bytes) = listen(&path, line.baud_rate, line.parity, duration) else {
                    break;
                };
                if let Some(found) = recognise(&bytes, &candidates) {
                    protocol = Some(found);
                    how = Some("heard it");
                    break;
                }
            }
        }
        let line = json!({
            "device": port.device,
            "by_id": port.by_id,
            "vid": port.vid.map(|v| format!("{v:04x}")),
            "pid": port.pid.map(|p| format!("{p:04x}")),
            "manufacturer": port.manufacturer,
            "product": port.product,
            "serial_number": port.serial_number,
            "adapter": known.map(|(description, _)| description),
            "protocol": protocol.map(Protocol::name),
            "recognised_by": how,
            "configured_as": in_use,
        });
        if json {
            println!("{line}");
        } else {
            println!(
                "{}  {}:{}  {} {}  serial {}",
                port.device.display(),
                line["vid"].as_str().unwrap_or("----"),
                line["pid"].as_str().unwrap_or("----"),
                port.manufacturer.as_deref().unwrap_or("?"),
                port.product.as_deref().unwrap_or(""),
                port.serial_number.as_deref().unwrap_or("-"),
            );
            if let Some(link) = &port.by_id {
                println!("    path = \"{}\"", link.display());
            }
            match (protocol, &in_use) {
                (_, Some(id)) => println!("    read by vitalsd as {id}"),
                (Some(protocol), None) => println!(
                    "    looks like {} ({}); config: protocol = \"{}\"",
                    protocol.description(),
                    how.unwrap_or(""),
                    protocol.name()
                ),
                (None, None) => println!("    protocol not recognised: take a measurement while listening, or see `vitalsd decode --list`"),
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_groups_share_line_settings_and_skip_the_talking_protocols() {
        let groups: Vec<String> = listen_groups()
            .iter()
            .map(|(line, protocols)| {
                let names: Vec<&str> = protocols.iter().map(|p| p.name()).collect();
                format!("{} {:?}: {}", line.baud_rate, line.parity, names.join(" "))
            })
            .collect();
        assert_eq!(
            groups,
            [
                "9600 None: nonin-df13 nonin-df8 nonin-df7 nonin-df2 masimo-ascii tanita",
                "19200 Odd: contec-cms50-legacy"
            ]
        );
    }

    #[test]
    fn recognition_by_decoding() {
        let df8: Vec<u8> = [0x80u8, 0x48, 0x61, 0x00].repeat(5);
        let candidates = &listen_groups()[0].1;
        assert_eq!(recognise(&df8, candidates), Some(Protocol::NoninDf8));
        let masimo = b"SpO2=097 PR=069 PI=04.69 EXC=800:SET\r\n".repeat(3);
        assert_eq!(recognise(&masimo, candidates), Some(Protocol::MasimoAscii));
        assert_eq!(recognise(&[0x13, 0x37, 0x00, 0x42], candidates), None);
    }
}
