//! Finds the serial ports present and what they are: the USB vendor and product ids, manufacturer,
//! product and serial strings from sysfs, and the stable `/dev/serial/by-id` link, so that a port can be
//! matched by its USB identity and a technician can see what is plugged in.
//!
//! The roots are parameters (`/sys` and `/dev` in production, `VITALSD_SYSFS_ROOT` and
//! `VITALSD_DEV_ROOT` override them for tests and containers).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{Link, UsbAdapter, PROTOCOLS, SHARED_ADAPTERS};
use crate::decode::Protocol;
use crate::model::payload::DeviceIdentity;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    /// The device node, such as `/dev/ttyUSB0`.
    pub device: PathBuf,
    /// The stable link under `/dev/serial/by-id`, when udev made one.
    pub by_id: Option<PathBuf>,
    pub vid: Option<u16>,
    pub pid: Option<u16>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial_number: Option<String>,
}

/// Where to look: sysfs and the device directory.
#[derive(Debug, Clone)]
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Roots {
    /// `/sys` and `/dev`, unless the environment points elsewhere.
    pub fn from_environment() -> Roots {
        Roots {
            sys: std::env::var_os("VITALSD_SYSFS_ROOT")
                .map_or_else(|| PathBuf::from("/sys"), PathBuf::from),
            dev: std::env::var_os("VITALSD_DEV_ROOT")
                .map_or_else(|| PathBuf::from("/dev"), PathBuf::from),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn read_hex(path: &Path) -> Option<u16> {
    u16::from_str_radix(&read_trimmed(path)?, 16).ok()
}

/// The USB device directory above a tty's device: the first ancestor with `idVendor`.
fn usb_device_dir(device_dir: &Path) -> Option<PathBuf> {
    let mut dir = std::fs::canonicalize(device_dir).ok()?;
    for _ in 0..8 {
        if dir.join("idVendor").exists() {
            return Some(dir);
        }
        dir = dir.parent()?.to_path_buf();
    }
    None
}

/// Every tty backed by real hardware (it has a `device` in sysfs), USB ones with their identity.
pub fn list(roots: &Roots) -> Vec<PortInfo> {
    let by_id_dir = roots.dev.join("serial").join("by-id");
    let links: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(&by_id_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let target = std::fs::canonicalize(entry.path()).ok()?;
                    Some((entry.path(), target))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports: Vec<PortInfo> = std::fs::read_dir(roots.sys.join("class").join("tty"))
        .map(|entries| entries.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let device_dir = entry.path().join("device");
            if !device_dir.exists() {
                return None;
            }
            let usb = usb_device_dir(&device_dir);
            // Platform UARTs (ttyS*) without a USB parent are listed only when something could be on them.
            if usb.is_none() && !name.starts_with("ttyAMA") && !name.starts_with("ttyS") {
                return None;
            }
            let device = roots.dev.join(&name);
            let resolved = std::fs::canonicalize(&device).unwrap_or_else(|_| device.clone());
            let by_id = links
                .iter()
                .find(|(_, target)| *target == resolved)
                .map(|(link, _)| link.clone());
            let field = |file: &str| usb.as_ref().and_then(|dir| read_trimmed(&dir.join(file)));
            Some(PortInfo {
                vid: usb.as_ref().and_then(|dir| read_hex(&dir.join("idVendor"))),
                pid: usb
                    .as_ref()
                    .and_then(|dir| read_hex(&dir.join("idProduct"))),
                manufacturer: field("manufacturer"),
                product: field("product"),
                serial_number: field("serial"),
                device,
                by_id,
            })
        })
        // Plain ttyS ports are legion on PCs and almost never wired; keep them out unless they are USB.
        .filter(|port| port.vid.is_some() || port.device.to_string_lossy().contains("ttyAMA"))
        .collect();
    ports.sort_by(|a, b| a.device.cmp(&b.device));
    ports
}

/// The USB identity of the port at `path` (a by-id link or a device node), if it is a USB port.
pub fn find(roots: &Roots, path: &Path) -> Option<PortInfo> {
    let wanted = std::fs::canonicalize(path).ok()?;
    list(roots)
        .into_iter()
        .find(|port| std::fs::canonicalize(&port.device).ok().as_ref() == Some(&wanted))
}

/// What the chips inside generic USB-serial cables call themselves when their maker left the defaults.
/// Those strings name the cable, not the medical device at its end, so they never become the device's.
const BRIDGE_DEFAULT_MANUFACTURERS: [&str; 6] = [
    "FTDI",
    "Silicon Labs",
    "Silicon Laboratories",
    "Prolific Technology Inc.",
    "QinHeng Electronics",
    "wch.cn",
];

impl PortInfo {
    /// The device's identity from its USB descriptor: manufacturer, product as the model, and serial,
    /// unless the descriptor is a cable chip's default, which says nothing about the device.
    pub fn device_identity(&self) -> DeviceIdentity {
        let generic = self.manufacturer.as_deref().is_none_or(|maker| {
            BRIDGE_DEFAULT_MANUFACTURERS
                .iter()
                .any(|default| maker.eq_ignore_ascii_case(default))
        });
        match generic {
            true => DeviceIdentity::default(),
            false => DeviceIdentity {
                manufacturer: self.manufacturer.clone(),
                model: self.product.clone(),
                serial_number: self.serial_number.clone(),
                ..DeviceIdentity::default()
            },
        }
    }
}

/// What the hub knows about a USB serial adapter from its ids alone, from the catalogue: a description for
/// people and, where the adapter is used by one device family only, the protocol to try.
pub fn known_adapter(vid: u16, pid: u16) -> Option<(&'static str, Option<Protocol>)> {
    let is = |adapter: &&UsbAdapter| adapter.vid == vid && adapter.pid == pid;
    PROTOCOLS
        .iter()
        .find_map(|row| match &row.link {
            Link::Serial(serial) => serial
                .adapters
                .iter()
                .find(is)
                .map(|adapter| (adapter.description, Some(row.protocol))),
            _ => None,
        })
        .or_else(|| {
            SHARED_ADAPTERS
                .iter()
                .find(is)
                .map(|adapter| (adapter.description, None))
        })
}

/// How a configured port is found; configuration says it, this module finds it.
pub use crate::config::PortLocation;

impl PortLocation {
    /// The path to open now, if the device is present.
    pub fn resolve(&self, roots: &Roots) -> Option<PathBuf> {
        match self {
            PortLocation::Path(path) => path.exists().then(|| path.clone()),
            PortLocation::Usb {
                vid,
                pid,
                serial_number,
            } => list(roots)
                .into_iter()
                .find(|port| {
                    port.vid == Some(*vid)
                        && port.pid == Some(*pid)
                        && serial_number
                            .as_ref()
                            .is_none_or(|wanted| port.serial_number.as_ref() == Some(wanted))
                })
                .map(|port| port.by_id.unwrap_or(port.device)),
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A sysfs and /dev tree for tests: USB serial adapters whose device nodes point where the test says.

    use std::path::Path;

    pub struct FakeAdapter<'a> {
        pub tty: &'a str,
        pub vid: u16,
        pub pid: u16,
        pub manufacturer: &'a str,
        pub product: &'a str,
        pub serial: &'a str,
        pub by_id: Option<&'a str>,
    }

    /// Adds one adapter under `root/sys` and `root/dev`; its device node links to `node_target`.
    pub fn add(root: &Path, adapter: &FakeAdapter<'_>, node_target: &Path) {
        let usb = root.join(format!("sys/devices/usb1/1-{}", adapter.tty));
        let interface = usb.join("1-1:1.0");
        std::fs::create_dir_all(interface.join(adapter.tty)).unwrap();
        std::fs::write(usb.join("idVendor"), format!("{:04x}\n", adapter.vid)).unwrap();
        std::fs::write(usb.join("idProduct"), format!("{:04x}\n", adapter.pid)).unwrap();
        std::fs::write(
            usb.join("manufacturer"),
            format!("{}\n", adapter.manufacturer),
        )
        .unwrap();
        std::fs::write(usb.join("product"), format!("{}\n", adapter.product)).unwrap();
        std::fs::write(usb.join("serial"), format!("{}\n", adapter.serial)).unwrap();
        let class = root.join("sys/class/tty").join(adapter.tty);
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(interface.join(adapter.tty), class.join("device")).unwrap();
        std::fs::create_dir_all(root.join("dev/serial/by-id")).unwrap();
        let node = root.join("dev").join(adapter.tty);
        std::os::unix::fs::symlink(node_target, &node).unwrap();
        if let Some(link) = adapter.by_id {
            std::os::unix::fs::symlink(&node, root.join("dev/serial/by-id").join(link)).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{add, FakeAdapter};
    use super::*;

    #[track_caller]
    fn check_identity(manufacturer: Option<&str>, expected: &str) {
        let port = PortInfo {
            device: PathBuf::from("/dev/ttyUSB0"),
            by_id: None,
            vid: Some(0x0403),
            pid: Some(0x6001),
            manufacturer: manufacturer.map(str::to_string),
            product: Some("Onyx 9560".to_string()),
            serial_number: Some("501234567".to_string()),
        };
        let identity = port.device_identity();
        let rendered = format!(
            "{:?} {:?} {:?}",
            identity.manufacturer, identity.model, identity.serial_number
        );
        assert_eq!(rendered, expected, "{manufacturer:?}");
    }

    #[test]
    fn a_usb_descriptor_names_the_device_unless_it_is_a_cable_chips_default() {
        let device = r#"Some("Nonin Medical Inc.") Some("Onyx 9560") Some("501234567")"#;
        check_identity(Some("Nonin Medical Inc."), device);
        check_identity(Some("FTDI"), "None None None");
        check_identity(Some("ftdi"), "None None None");
        check_identity(Some("Silicon Labs"), "None None None");
        check_identity(Some("Prolific Technology Inc."), "None None None");
        check_identity(Some("QinHeng Electronics"), "None None None");
        check_identity(None, "None None None");
    }

    #[test]
    fn usb_adapters_are_listed_with_their_identity_and_by_id_link_and_matched() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("pty-a");
        std::fs::write(&target, b"").unwrap();
        let other = root.path().join("pty-b");
        std::fs::write(&other, b"").unwrap();
        add(
            root.path(),
            &FakeAdapter {
                tty: "ttyUSB0",
                vid: 0x10C4,
                pid: 0xEA60,
                manufacturer: "Silicon Labs",
                product: "CP2102 USB to UART Bridge Controller",
                serial: "0001",
                by_id: Some(
                    "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0",
                ),
            },
            &target,
        );
        add(
            root.path(),
            &FakeAdapter {
                tty: "ttyUSB1",
                vid: 0x0403,
                pid: 0x6001,
                manufacturer: "FTDI",
                product: "FT232R USB UART",
                serial: "A10K2",
                by_id: None,
            },
            &other,
        );
        std::fs::create_dir_all(root.path().join("sys/class/tty/tty1")).unwrap();
        let roots = Roots {
            sys: root.path().join("sys"),
            dev: root.path().join("dev"),
        };
        let ports = list(&roots);
        let summary: Vec<String> = ports
            .iter()
            .map(|p| {
                format!(
                    "{} {:04x}:{:04x} {} {} by-id={}",
                    p.device.file_name().unwrap().to_string_lossy(),
                    p.vid.unwrap(),
                    p.pid.unwrap(),
                    p.manufacturer.as_deref().unwrap(),
                    p.serial_number.as_deref().unwrap(),
                    p.by_id.is_some()
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "ttyUSB0 10c4:ea60 Silicon Labs 0001 by-id=true",
                "ttyUSB1 0403:6001 FTDI A10K2 by-id=false"
            ]
        );
        let usb = |vid, pid, serial: Option<&str>| PortLocation::Usb {
            vid,
            pid,
            serial_number: serial.map(str::to_string),
        };
        assert_eq!(
            usb(0x0403, 0x6001, None).resolve(&roots),
            Some(root.path().join("dev/ttyUSB1"))
        );
        assert!(usb(0x10C4, 0xEA60, Some("0001"))
            .resolve(&roots)
            .unwrap()
            .to_string_lossy()
            .contains("by-id"));
        assert_eq!(usb(0x10C4, 0xEA60, Some("9999")).resolve(&roots), None);
        assert_eq!(usb(0x1234, 0x5678, None).resolve(&roots), None);
    }

    #[track_caller]
    fn check_adapter(vid: u16, pid: u16, expected: Option<(&str, Option<Protocol>)>) {
        assert_eq!(known_adapter(vid, pid), expected, "{vid:04x}:{pid:04x}");
    }

    #[test]
    fn adapters_known_by_their_ids() {
        let ftdi = "FTDI USB-serial (Masimo, Tanita and Nonin cables, among others)";
        let cp210x = "Silicon Labs CP210x, the Contec CMS50 cable";
        check_adapter(0x10C4, 0xEA60, Some((cp210x, Some(Protocol::ContecCms50))));
        check_adapter(0x0403, 0x6001, Some((ftdi, None)));
        check_adapter(0x0403, 0x6015, Some((ftdi, None)));
        check_adapter(0x067B, 0x2303, Some(("Prolific PL2303 USB-serial", None)));
        check_adapter(0x1A86, 0x7523, Some(("WCH CH340 USB-serial", None)));
        check_adapter(0x10C4, 0xEA61, None);
    }
}
