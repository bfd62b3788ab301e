//! The real-BlueZ rig: a Debian 12 VM under qemu (TCG) with Debian's kernel, `hci_vhci`, two virtual LE
//! controllers from `btvirt -L -l2` and a real bluetoothd 5.66, in which the `vitalsd` binary cargo built
//! for this test talks to a simulated device (`ble-peripheral`, an example of this package) on the
//! second controller, and publishes to a Mosquitto the test started on the host (10.0.2.2 in the guest).
//!
//! The root filesystem is built once with debootstrap (`build-image.sh`, the package list in `packages`)
//! and kept under `target/real-bluez/image-<hash>`, the hash taken over both files, so a change rebuilds
//! it. Every boot runs on a throw-away overlay (`snapshot=on`). The test and the guest share one
//! directory over 9p: the binaries, the guest's init script, the scenario, and `out/` for what comes
//! back (logs, the device's events). The guest ends the VM through qemu's isa-debug-exit port with the
//! scenario's exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PACKAGES: &str = include_str!("packages");
const PACKAGES_SYSTEMD: &str = include_str!("packages-systemd");
const BUILD_SCRIPT: &str = include_str!("build-image.sh");
const PACKAGES_LOCK: &str = include_str!("packages.lock");
const PACKAGES_SYSTEMD_LOCK: &str = include_str!("packages-systemd.lock");
const GUEST_INIT: &str = include_str!("guest-init.sh");
const GUEST_SYSTEMD_INIT: &str = include_str!("guest-systemd.sh");
const GUEST_LIB: &str = include_str!("guest-lib.sh");
const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hil-tests/support/real_bluez");

/// The hub's controller and the device's, as btvirt numbers them.
pub const HUB_ADAPTER: &str = "hci0";
pub const DEVICE_ADAPTER: &str = "hci1";
/// btvirt's public address of hci1, where the simulated device lives.
pub const DEVICE_ADDRESS: &str = "00:AA:01:01:00:01";

/// The third controller, for the scenario with a second device (`Guest::controllers_for_two_devices`).
pub const SECOND_DEVICE_ADAPTER: &str = "hci2";
pub const SECOND_DEVICE_ADDRESS: &str = "00:AA:01:02:00:02";

/// Exit codes the guest's init uses for its own failures (`guest-init.sh`), above any scenario's.
const RIG_FAILURES: [(i32, &str); 6] = [
    (120, "a kernel module (hci_vhci, virtio_net) did not load"),
    (121, "the guest's network did not come up"),
    (122, "dbus-daemon did not start"),
    (123, "btvirt's controllers did not come up, three times"),
    (
        124,
        "bluetoothd did not show every adapter on D-Bus, powered",
    ),
    (125, "the 9p share could not be mounted"),
];

/// Where the rig keeps its image, its build log and the shares of its runs.
fn rig_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("real-bluez")
}

/// Which root filesystem a guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The scenarios' image: `guest-init.sh` is PID 1 and brings up the Bluetooth stack itself.
    Scenario,
    /// The same with systemd (`packages-systemd`): `guest-systemd.sh` hands over to systemd as PID 1,
    /// which starts bluetoothd, and the scenario runs as a unit once the system is up.
    Systemd,
}

impl Flavour {
    /// The package list, its file's name, and the lock of the versions it installed.
    fn packages(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Flavour::Scenario => (PACKAGES, "packages", PACKAGES_LOCK),
            Flavour::Systemd => (PACKAGES_SYSTEMD, "packages-systemd", PACKAGES_SYSTEMD_LOCK),
        }
    }
}

/// The image's cache key: the package list and the build script, as compiled into this test.
fn image_key(flavour: Flavour) -> String {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(flavour.packages().0.as_bytes());
    hasher.update(BUILD_SCRIPT.as_bytes());
    format!("{:08x}", hasher.finalize())
}

/// Fails the test, saying how to get it, when a program the rig needs is missing.
#[track_caller]
fn require(program: &str, package: &str, why: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "the real-BlueZ suite needs `{program}` ({why}), and it is not installed.\n\
         Install it with: sudo apt-get install {package}"
    );
}

/// The built image: kernel, initramfs, root filesystem.
pub struct Image {
    pub dir: PathBuf,
    /// Where the installed package versions differ from the lock (`packages.lock`, `packages-systemd.lock`),
    /// for the test's output.
    pub lock_differences: Vec<String>,
}

/// The scenarios' image, built first if this change of the package list or build script has none yet.
/// Tests that start at once wait for one build: it runs under an exclusive lock on
/// `target/real-bluez/build.lock`.
pub fn image() -> &'static Image {
    image_of(Flavour::Scenario)
}

pub fn image_of(flavour: Flavour) -> &'static Image {
    static IMAGES: [OnceLock<Image>; 2] = [OnceLock::new(), OnceLock::new()];
    IMAGES[flavour as usize].get_or_init(|| {
        let started = Instant::now();
        let rig = rig_dir();
        std::fs::create_dir_all(&rig).expect("create target/real-bluez");
        let dir = rig.join(format!("image-{}", image_key(flavour)));
        let lock_file = std::fs::File::create(rig.join("build.lock")).expect("open the build lock");
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, error)| error)
            .expect("lock target/real-bluez/build.lock");
        if !dir.join("root.ext4").exists() {
            build(&dir, flavour.packages().1);
            eprintln!("real-BlueZ image built in {:?}", started.elapsed());
        }
        let installed = std::fs::read_to_string(dir.join("packages.installed"))
            .expect("the image's packages.installed");
        let lock_differences = compare_with_lock(flavour.packages().2, &installed);
        for difference in &lock_differences {
            eprintln!("real-BlueZ image differs from its lock: {difference}");
        }
        let bluez_moved = lock_differences
            .iter()
            .any(|difference| difference.starts_with("bluez:") && difference.contains("upstream"));
        assert!(
            !bluez_moved,
            "the image's BlueZ is another upstream release than its lock names, and the suite is \
             about that release's behaviour: {lock_differences:?}\nReview the differences, then copy \
             {}/packages.installed to {SOURCE_DIR}/{}.lock",
            dir.display(),
            flavour.packages().1
        );
        Image {
            dir,
            lock_differences,
        }
    })
}

fn build(dir: &Path, packages: &str) {
    require(
        "debootstrap",
        "debootstrap",
        "to build the VM's root filesystem",
    );
    require("mkfs.ext4", "e2fsprogs", "to make the VM's disk image");
    require(
        "unshare",
        "util-linux",
        "to keep the build's mounts from the host",
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real-BlueZ suite builds its VM image with debootstrap and chroot, which need root, and this \
         test runs as uid {}. Run it as root once (sudo -E cargo test --test real_bluez) to build \
         {}; later runs use the cached image",
        nix::unistd::geteuid(),
        dir.display()
    );
    let log_path = dir.with_extension("log");
    let log = std::fs::File::create(&log_path).expect("create the build log");
    // In a mount namespace of its own: debootstrap and chroot mount /proc, /sys and /dev/pts under the
    // root, and on a host whose mounts propagate (Docker), a devpts instance mounted there appears over
    // the host's /dev/pts and breaks every pseudo-terminal the other tests open.
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(Path::new(SOURCE_DIR).join("build-image.sh"))
        .arg(Path::new(SOURCE_DIR).join(packages))
        .arg(dir)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .status()
        .expect("run build-image.sh");
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "building the real-BlueZ image failed ({status}); the end of {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Parses `name version` lines, skipping `#` comments.
fn versions(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .collect()
}

/// The upstream part of a Debian version: without epoch and Debian revision.
fn upstream(version: &str) -> &str {
    let version = version.split_once(':').map_or(version, |(_, rest)| rest);
    version
        .rsplit_once('-')
        .map_or(version, |(upstream, _)| upstream)
}

/// How the installed packages differ from the lock, one line each: a point release moves Debian
/// revisions (a warning), another upstream version says "upstream".
pub fn compare_with_lock(lock: &str, installed: &str) -> Vec<String> {
    let locked = versions(lock);
    let found = versions(installed);
    let mut differences = Vec::new();
    for (name, want) in &locked {
        match found.get(name) {
            None => differences.push(format!("{name}: locked {want}, not installed")),
            Some(have) if have == want => {}
            Some(have) if upstream(have) == upstream(want) => {
                differences.push(format!("{name}: locked {want}, installed {have}"))
            }
            Some(have) => differences.push(format!(
                "{name}: locked {want}, installed {have} (another upstream version)"
            )),
        }
    }
    for (name, have) in &found {
        if !locked.contains_key(name) {
            differences.push(format!("{name}: installed {have}, not in the lock"));
        }
    }
    differences
}

/// The `ble-peripheral` example, built by cargo for this test (examples are not built for an
/// integration test on their own).
fn peripheral_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        // Cargo gives a test the variables of its own build (OUT_DIR, LD_LIBRARY_PATH, CARGO_PKG_*);
        // passed on, they change build scripts' inputs, and the nested build would rebuild dependencies
        // that the outer one then rebuilds again.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let from_cargo = name.starts_with("CARGO_")
                && !matches!(name.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR")
                && !name.starts_with("CARGO_BUILD_");
            if from_cargo || name == "OUT_DIR" || name == "LD_LIBRARY_PATH" {
                cargo.env_remove(name.as_ref());
            }
        }
        let output = cargo
            .args([
                "build",
                "--locked",
                "--example",
                "ble-peripheral",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build --example ble-peripheral");
        assert!(
            output.status.success(),
            "cargo build --example ble-peripheral failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|message| {
                message["reason"] == "compiler-artifact"
                    && message["target"]["name"] == "ble-peripheral"
            })
            .and_then(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the ble-peripheral executable")
    })
}

/// One VM run's shared directory, filled by the test before the boot and read after it.
pub struct Guest {
    /// Taken on drop: kept when the test failed, or always when `VITALSD_REAL_BLUEZ_KEEP_SHARES` is
    /// set (to compare a passing run's logs with a failed one's), for a look at everything the guest
    /// wrote.
    share: Option<tempfile::TempDir>,
    flavour: Flavour,
    /// Devices and other arguments for qemu beyond the rig's own.
    qemu_args: Vec<String>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("VITALSD_REAL_BLUEZ_KEEP_SHARES").is_some()
        {
            if let Some(share) = self.share.take() {
                eprintln!("the guest's share is kept in {}", share.keep().display());
            }
        }
    }
}

/// How a boot ended.
pub struct Boot {
    /// The scenario's exit code, `None` when the guest ended without reporting one (a panic, a timeout).
    pub code: Option<i32>,
    pub elapsed: Duration,
    out: PathBuf,
}

impl Guest {
    /// A share with `vitalsd`, the device program and the guest's init script. Fails the test, saying
    /// what to install, where qemu or its 9p support is missing.
    pub fn new() -> Guest {
        Guest::of(Flavour::Scenario)
    }

    /// A guest that boots `flavour`'s image.
    pub fn of(flavour: Flavour) -> Guest {
        require(
            "qemu-system-x86_64",
            "qemu-system-x86",
            "to boot the VM with the real Bluetooth stack",
        );
        let devices = Command::new("qemu-system-x86_64")
            .args(["-device", "help"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            devices.contains("virtio-9p"),
            "the real-BlueZ suite shares files with its VM over 9p, and this qemu-system-x86_64 has no \
             virtio-9p device. Install Debian's build: sudo apt-get install qemu-system-x86"
        );
        image_of(flavour);
        let runs = rig_dir().join("runs");
        std::fs::create_dir_all(&runs).expect("create target/real-bluez/runs");
        let share = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&runs)
            .expect("a share directory");
        let bin = share.path().join("bin");
        std::fs::create_dir_all(share.path().join("out")).expect("create out/");
        std::fs::create_dir_all(&bin).expect("create bin/");
        for (from, name) in [
            (Path::new(super::daemon::BINARY), "vitalsd"),
            (peripheral_binary(), "ble-peripheral"),
        ] {
            let to = bin.join(name);
            if std::fs::hard_link(from, &to).is_err() {
                std::fs::copy(from, &to).expect("copy a binary into the share");
            }
        }
        let guest = Guest {
            share: Some(share),
            flavour,
            qemu_args: Vec::new(),
        };
        guest.write(
            "init.sh",
            match flavour {
                Flavour::Scenario => GUEST_INIT,
                Flavour::Systemd => GUEST_SYSTEMD_INIT,
            },
        );
        guest.write("lib.sh", GUEST_LIB);
        guest
    }

    pub fn path(&self) -> &Path {
        self.share.as_ref().expect("the share").path()
    }

    /// Gives the guest four controllers: hci2 for a second device, and hci3 for the link that lets the
    /// hub hold links to both at once (`hold_a_link_from` in `guest-lib.sh` says why).
    pub fn controllers_for_two_devices(&self) {
        self.write("controllers", "4");
    }

    /// Adds arguments to qemu's command line (devices for the guest).
    pub fn add_qemu_args(&mut self, args: &[&str]) {
        self.qemu_args
            .extend(args.iter().map(|arg| arg.to_string()));
    }

    /// Writes a file into the share; the guest sees it as `/share/NAME`.
    pub fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path().join(name), contents).expect("write into the share");
    }

    /// Boots the VM and waits until it ends, or kills it after `timeout`.
    pub fn boot(&self, timeout: Duration) -> Boot {
        let image = image_of(self.flavour);
        let out = self.path().join("out");
        // One VM at a time on this machine: TCG is CPU-bound, and two guests on two cores starve their
        // virtual controllers (the kernel's 2 s HCI command timeout then fails a controller's reset).
        let lock_file = std::fs::File::create(rig_dir().join("vm.lock"))
            .expect("open target/real-bluez/vm.lock");
        let _one_at_a_time =
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, error)| error)
                .expect("lock target/real-bluez/vm.lock");
        let started = Instant::now();
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "512"])
            .args([
                "-smp",
                "2",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", out.join("console.log").display()))
            .arg("-kernel")
            .arg(image.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.dir.join("initrd.img"))
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                image.dir.join("root.ext4").display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=share,security_model=none",
                self.path().display()
            ))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(["-nic", "user,model=virtio-net-pci"])
            .args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out.join("qemu.stderr")).expect("create qemu.stderr"))
            .spawn()
            .expect("start qemu-system-x86_64");
        let mut status = None;
        super::wait_until(timeout, || {
            status = qemu.try_wait().expect("wait for qemu");
            status.is_some()
        });
        if status.is_none() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
        // isa-debug-exit makes qemu exit with (code << 1) | 1; an even status is qemu's own end.
        let code = status
            .and_then(|status| status.code())
            .filter(|code| code & 1 == 1)
            .map(|code| code >> 1);
        // The test's thread is named after the test, so a run with --nocapture lists each scenario's
        // VM time, which the README reports.
        eprintln!(
            "real-BlueZ VM time of {}: {:.1} s (exit code {code:?})",
            std::thread::current().name().unwrap_or("a scenario"),
            started.elapsed().as_secs_f64()
        );
        Boot {
            code,
            elapsed: started.elapsed(),
            out,
        }
    }
}

impl Boot {
    /// A file the guest wrote into `out/`, empty when it wrote none.
    pub fn out(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }

    /// A JSON file the scenario wrote into `out/` (`vitalsd status --json`, `devices --json`).
    #[track_caller]
    pub fn out_json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.out(name))
            .unwrap_or_else(|error| panic!("out/{name} is not JSON ({error}):\n{}", self.report()))
    }

    /// The guest's logs, for a failure message: its stages, the scenario's output, the device's events,
    /// the daemon's log, and the ends of bluetoothd's log and the console.
    pub fn report(&self) -> String {
        let tail = |text: String, lines: usize| {
            let kept: Vec<&str> = text.lines().rev().take(lines).collect();
            kept.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let what = match self.code {
            Some(code) => RIG_FAILURES
                .iter()
                .find(|(rig, _)| *rig == code)
                .map_or(format!("the scenario exited {code}"), |(_, why)| {
                    format!("the rig failed: {why}")
                }),
            None => format!(
                "the VM ended without an exit code after {:?} (timeout, kernel panic)",
                self.elapsed
            ),
        };
        format!(
            "{what}\n--- stages\n{}\n--- rig.log\n{}\n--- scenario.log\n{}\n--- device events\n{}{}\n\
             --- daemon.log (end)\n{}\n--- bluetoothd.log (end)\n{}\n--- console (end)\n{}\n--- qemu\n{}",
            self.out("stages"),
            self.out("rig.log"),
            tail(self.out("scenario.log"), 60),
            self.out("device.jsonl"),
            match self.out("device2.jsonl") {
                none if none.is_empty() => none,
                second => format!("--- second device's events\n{second}"),
            },
            tail(self.out("daemon.log"), 60),
            tail(self.out("bluetoothd.log"), 60),
            tail(self.out("console.log"), 20),
            self.out("qemu.stderr"),
        )
    }

    /// The device's events (`device.jsonl`), in order.
    pub fn device_events(&self) -> Vec<serde_json::Value> {
        self.events_of("device")
    }

    /// The events of the device whose events file is `out/NAME.jsonl`, in order.
    pub fn events_of(&self, name: &str) -> Vec<serde_json::Value> {
        self.out(&format!("{name}.jsonl"))
            .lines()
            .map(|line| serde_json::from_str(line).expect("device events are JSON lines"))
            .collect()
    }

    /// Fails the test with the guest's logs unless the scenario exited 0.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(self.code == Some(0), "{}", self.report());
    }
}

#[cfg(test)]
mod tests {
    use super::compare_with_lock;

    #[track_caller]
    fn check(lock: &str, installed: &str, expected: &[&str]) {
        assert_eq!(compare_with_lock(lock, installed), expected);
    }

    #[test]
    fn the_image_is_compared_with_the_lock() {
        check("bluez 5.66-1\n", "bluez 5.66-1\n", &[]);
        check(
            "bluez 5.66-1+deb12u1\n",
            "bluez 5.66-1+deb12u2\n",
            &["bluez: locked 5.66-1+deb12u1, installed 5.66-1+deb12u2"],
        );
        check(
            "bluez 5.66-1\n",
            "bluez 5.70-1\n",
            &["bluez: locked 5.66-1, installed 5.70-1 (another upstream version)"],
        );
        check(
            "udev 1:252-1\nkmod 30-1\n",
            "kmod 30-1\nmore 1.0-1\n",
            &[
                "udev: locked 1:252-1, not installed",
                "more: installed 1.0-1, not in the lock",
            ],
        );
        check("# comment\nkmod 30-1\n", "kmod 30-1\n", &[]);
    }
}
