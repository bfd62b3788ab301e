//! A fake sysfs and /dev for USB serial adapters, so `vitalsd serial` and `match = { vid, pid }` can be
//! tested with pseudo-terminals standing in for the adapters' device nodes.

use std::path::{Path, PathBuf};

pub struct FakeUsb {
    pub root: PathBuf,
}

impl FakeUsb {
    pub fn new(root: &Path) -> FakeUsb {
        std::fs::create_dir_all(root.join("sys/class/tty")).unwrap();
        std::fs::create_dir_all(root.join("dev/serial/by-id")).unwrap();
        FakeUsb {
            root: root.to_path_buf(),
        }
    }

    /// The environment that points `vitalsd` at this tree.
    pub fn env(&self) -> [(String, String); 2] {
        [
            (
                "VITALSD_SYSFS_ROOT".into(),
                self.root.join("sys").display().to_string(),
            ),
            (
                "VITALSD_DEV_ROOT".into(),
                self.root.join("dev").display().to_string(),
            ),
        ]
    }

    /// Plugs an adapter in as `tty` whose device node is the pseudo-terminal behind `pty_link`.
    pub fn plug(&self, tty: &str, vid: u16, pid: u16, serial: &str, pty_link: &Path) {
        self.plug_as(
            tty,
            (vid, pid),
            ("FTDI", "FT232R USB UART"),
            serial,
            pty_link,
        );
    }

    /// Plugs an adapter in whose descriptor names its maker and product, as a device with its own USB
    /// does (a generic cable's chip says "FTDI").
    pub fn plug_as(
        &self,
        tty: &str,
        (vid, pid): (u16, u16),
        (manufacturer, product): (&str, &str),
        serial: &str,
        pty_link: &Path,
    ) {
        let usb = self.root.join(format!("sys/devices/usb1/1-{tty}"));
        let interface = usb.join("1-1:1.0").join(tty);
        std::fs::create_dir_all(&interface).unwrap();
        for (file, text) in [
            ("idVendor", format!("{vid:04x}")),
            ("idProduct", format!("{pid:04x}")),
            ("manufacturer", manufacturer.to_string()),
            ("product", product.to_string()),
            ("serial", serial.to_string()),
        ] {
            std::fs::write(usb.join(file), format!("{text}\n")).unwrap();
        }
        let class = self.root.join("sys/class/tty").join(tty);
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&interface, class.join("device")).unwrap();
        let target = std::fs::read_link(pty_link).expect("the pty link");
        let node = self.root.join("dev").join(tty);
        std::os::unix::fs::symlink(target, &node).unwrap();
        let name = format!("{manufacturer}_{product}").replace([' ', ',', '.'], "_");
        std::os::unix::fs::symlink(
            &node,
            self.root
                .join("dev/serial/by-id")
                .join(format!("usb-{name}_{serial}-if00-port0")),
        )
        .unwrap();
    }

    /// Unplugs the adapter: its sysfs entries, node and by-id link disappear.
    pub fn unplug(&self, tty: &str, serial: &str) {
        let _ = std::fs::remove_dir_all(self.root.join("sys/class/tty").join(tty));
        let _ = std::fs::remove_dir_all(self.root.join(format!("sys/devices/usb1/1-{tty}")));
        let _ = std::fs::remove_file(self.root.join("dev").join(tty));
        let by_id = self.root.join("dev/serial/by-id");
        for link in std::fs::read_dir(&by_id).into_iter().flatten().flatten() {
            if link
                .file_name()
                .to_string_lossy()
                .ends_with(&format!("_{serial}-if00-port0"))
            {
                let _ = std::fs::remove_file(link.path());
            }
        }
    }
}
