//! The Debian packages: `scripts/package ARCH` builds each one, lintian judges it, and the arm64 and armhf
//! packages are installed with apt into clean Debian 12 roots of their own architecture, where the daemon
//! runs under qemu-user against the root's Mosquitto and a simulated Nonin 9560 on a pseudo-terminal.
//!
//! They need root, debootstrap, Debian's archive, lintian and qemu-user-static with binfmt_misc (`.ci/run`
//! installs them). The first run builds the build root, the Debian 12 roots and the packages, all cached
//! under target/; a missing prerequisite fails the test with what to install.

#[allow(
    dead_code,
    reason = "the HIL suite's support; this target uses a part of it"
)]
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use support::nonin::SpotCheck;
use support::pty::SimulatedPort;
use support::subscriber::Subscriber;
use support::{lease_port, listens_on, wait_for, wait_until};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_amd64_package_passes_lintian() {
    check_lintian("amd64");
}

#[test]
fn the_arm64_package_passes_lintian() {
    check_lintian("arm64");
}

#[test]
fn the_armhf_package_passes_lintian() {
    check_lintian("armhf");
}

#[test]
fn the_arm64_package_installs_on_debian_12_and_delivers_a_reading() {
    check_installed("arm64");
}

#[test]
fn the_armhf_package_installs_on_debian_12_and_delivers_a_reading() {
    check_installed("armhf");
}

/// The guest's part of [`the_amd64_package_runs_under_systemd_with_bluez_and_a_usb_serial_adapter`], run
/// by systemd as the unit rig-scenario once the system is up. Its exit code says which step failed.
const SYSTEMD_SCENARIO: &str = r#". /share/lib.sh
set -x
export VITALSD_CONFIG=/etc/vitalsd/vitalsd.toml
show() { systemctl show vitalsd -p "$1" --value; }
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" && ip route add default via 10.0.2.2 || exit 20
# On a busy machine btvirt can answer the kernel's first HCI Reset later than its 2 s timeout, and that
# controller is never set up; the rig then starts btvirt again with fresh controllers, as guest-init.sh does.
# (btmgmt, which guest-init.sh asks, prints nothing with its input at end of file, as in a unit; bluetoothd
# is asked instead: a controller that was never set up never reaches it.)
controllers_ready() {
  adapter_powered hci0 && adapter_powered hci1 &&
    dbus-send --system --print-reply --dest=org.bluez /org/bluez/hci1 org.freedesktop.DBus.Properties.Get \
      string:org.bluez.Adapter1 string:Address 2>/dev/null | grep -q 00:AA:01:01:00:01
}
no_controllers() { [ -z "$(ls /sys/class/bluetooth)" ]; }
for attempt in 1 2 3; do
  wait_for 30 controllers_ready && break
  echo "attempt $attempt: btvirt's controllers did not come up: $(ls /sys/class/bluetooth)" >> $out/rig.log
  [ $attempt = 3 ] && exit 21
  systemctl stop rig-btvirt
  wait_for 10 no_controllers
  systemctl start rig-btvirt
done
wait_for 60 adapter_powered hci0 || exit 21
wait_for 60 adapter_powered hci1 || exit 21
stage bluetooth up

dpkg -i /share/vitalsd.deb > $out/dpkg.log 2>&1 || exit 22
systemctl is-enabled vitalsd > $out/enabled-after-install
systemctl is-active vitalsd > $out/active-after-install
cp /share/50-test.toml /etc/vitalsd/vitalsd.toml.d/50-test.toml
install -m 0644 /share/ops.pub /etc/vitalsd/fleet-ops.pub

systemctl start vitalsd || { systemctl status vitalsd > $out/start-failed.txt 2>&1; exit 23; }
first_pid=$(show MainPID)
printf '%s %s %s\n' "$(show Type)" "$(show ActiveState)" "$(show SubState)" > $out/started
systemd-analyze security vitalsd --no-pager > $out/security.txt 2>&1
stage started

# The serial reading: the test feeds the USB serial adapter from the host.
delivered() {
  /usr/bin/vitalsd status --json > $out/status.json 2>/dev/null || return 1
  count=$(grep -o '"delivered_total": *[0-9]*' $out/status.json | grep -o '[0-9]*$')
  [ "${count:-0}" -ge "$1" ]
}
wait_for 60 delivered 1 || exit 24
sleep 3
grep VmRSS "/proc/$(show MainPID)/status" > $out/idle-rss
stage serial delivered

# The retained set_serial_ports the test published before the boot: written into the drop-in directory
# under the unit's sandbox, then the daemon started again in place (same PID, no restart by systemd).
wait_for 60 test -f /etc/vitalsd/vitalsd.toml.d/50-fleet.toml || exit 25
started_again() { journalctl -u vitalsd --no-pager | grep -q 'Stopping to start again'; }
wait_for 30 started_again || exit 26
printf '%s %s %s %s\n' "$first_pid" "$(show MainPID)" "$(show NRestarts)" "$(show ActiveState)" > $out/fleet-pids
stat -c '%U:%G %a' /etc/vitalsd/vitalsd.toml.d > $out/drop-in-dir
stage fleet

# Bluetooth: `vitalsd scan` asks the running daemon over its control socket, and the daemon scans through
# bluetoothd on the system bus, under the unit's sandbox and groups, and hears the cuff advertising.
start_device
wait_for 30 device_said ready || exit 30
/usr/bin/vitalsd scan --seconds 10 --json > $out/scan.json 2> $out/scan.err || exit 31
stage scanned

# A wedged daemon: stopped, it pings the watchdog no more, and systemd restarts it.
wedged=$(show MainPID)
kill -STOP "$wedged"
restarted() {
  systemctl show vitalsd -p MainPID -p ActiveState -p SubState -p NRestarts -p Result >> $out/watchdog-states
  pid=$(show MainPID)
  [ "$pid" != "$wedged" ] && [ "$pid" != 0 ] && [ "$(show ActiveState)" = active ]
}
wait_for 150 restarted || { journalctl -u vitalsd --no-pager | tail -n 40 > $out/watchdog-journal; exit 40; }
printf '%s\n' "$(show NRestarts)" > $out/restarts
journalctl -u vitalsd --no-pager | grep -i watchdog > $out/watchdog.txt
stage restarted

systemctl stop vitalsd || exit 50
printf '%s %s\n' "$(show ActiveState)" "$(show ExecMainStatus)" > $out/stopped
stage stopped
"#;

/// The amd64 package in a Debian 12 VM with systemd as PID 1 (the real-BlueZ rig's image with
/// systemd-sysv): installed with dpkg, started by systemd (`Type=notify`), it reads a Nonin on a USB serial
/// adapter qemu emulates (an FTDI chip: ttyUSB0 in the guest, allowed by the unit's `DeviceAllow`) and fed
/// from the host, finds a cuff advertising on a btvirt controller through the real bluetoothd when a
/// technician's `vitalsd scan` asks it over its control socket, is restarted by the watchdog when stopped
/// with SIGSTOP, and says `offline` when stopped.
#[test]
fn the_amd64_package_runs_under_systemd_with_bluez_and_a_usb_serial_adapter() {
    use support::bluez::devices::{blood_pressure_record, date_time};
    use support::real_bluez::{Flavour, Guest};
    let deb = package("amd64");
    let broker = support::broker::Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut guest = Guest::of(Flavour::Systemd);
    std::fs::copy(&deb, guest.path().join("vitalsd.deb")).expect("copy the package into the share");
    guest.write(
        "50-test.toml",
        &format!(
            "[hub]\nclock = \"trusted\"\n\n[mqtt]\nurl = \"mqtt://10.0.2.2:{}\"\nkeep_alive_s = 5\n\
             reconnect_min_ms = 200\nreconnect_max_s = 1\n\n[ble]\nadapter = \"hci0\"\n\n\
             [[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\n\n\
             [fleet]\nkeys = {{ ops = \"/etc/vitalsd/fleet-ops.pub\" }}\n",
            broker.port
        ),
    );
    // A fleet command waiting, retained, for the hub's first connection: the same serial port, through
    // the fleet's drop-in, which the unit's sandbox must let the daemon write.
    let keys = guest.path().join("keys");
    let made = Command::new(support::daemon::BINARY)
        .args(["fleet", "keygen", "--name", "ops", "--out"])
        .arg(&keys)
        .status()
        .expect("vitalsd fleet keygen");
    assert!(made.success());
    std::fs::copy(keys.join("ops.pub"), guest.path().join("ops.pub")).expect("copy the public key");
    let signed = Command::new(support::daemon::BINARY)
        .args(["fleet", "sign", "--key"])
        .arg(keys.join("ops.key"))
        .args([
            "--hub",
            "hub-0001",
            "--command",
            "set_serial_ports",
            "--request-id",
            "fleet-1",
        ])
        .args([
            "--valid-for",
            "2h",
            "--args",
            r#"{"ports":[{"path":"/dev/ttyUSB0","protocol":"nonin-df13"}]}"#,
        ])
        .output()
        .expect("vitalsd fleet sign");
    assert!(signed.status.success());
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", "vitalsd/v1/hub-0001/cmd/fleet-1", "-m"])
        .arg(String::from_utf8_lossy(&signed.stdout).trim())
        .status()
        .expect("mosquitto_pub");
    assert!(published.success());
    let records = [blood_pressure_record(
        131,
        84,
        99,
        71,
        date_time(2024, 3, 15, 7, 0, 0),
    )];
    let device = serde_json::json!({
        "adapter": "hci1",
        "model": "and-cuff",
        "agent": "accept",
        "replay": true,
        "sessions": [{"records": records.iter().map(hex::encode).collect::<Vec<_>>()}],
        "events": "/share/out/device.jsonl",
    });
    guest.write("device.json", &device.to_string());
    guest.write("scenario.sh", SYSTEMD_SCENARIO);

    // The adapter's host end: a socket qemu listens on; the Nonin sends its spot check every 2 s (the
    // guest's tty reads nothing before the daemon opens it), until the VM is gone.
    let socket = guest.path().join("nonin.sock");
    guest.add_qemu_args(&[
        "-device",
        "qemu-xhci,id=xhci",
        "-chardev",
        &format!(
            "socket,id=nonin,path={},server=on,wait=off",
            socket.display()
        ),
        "-device",
        "usb-serial,chardev=nonin,bus=xhci.0",
    ]);
    let spot = SpotCheck::numbered(11);
    let frame = spot.frame();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        let mut stream = loop {
            if let Ok(stream) = std::os::unix::net::UnixStream::connect(&socket) {
                break stream;
            }
            if std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        while stream.write_all(&frame).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
        }
    });

    let boot = {
        let _no_builds = BUILDS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guest.boot(Duration::from_secs(900))
    };
    let _ = feeder.join();
    let report = || {
        format!(
            "{}\n--- journal (end)\n{}",
            boot.report(),
            tail(&boot.out("journal.log"), 80)
        )
    };
    assert_eq!(boot.code, Some(0), "{}", report());

    assert_eq!(
        boot.out("enabled-after-install").trim(),
        "enabled",
        "{}",
        report()
    );
    assert_eq!(
        boot.out("active-after-install").trim(),
        "inactive",
        "{}",
        report()
    );
    // The retained fleet command published before the boot reaches the daemon within a second or two of
    // its start, and it then restarts in place, telling systemd it is reloading: on a slow machine the
    // look taken after `systemctl start` returned can fall into that reload (seen in a clean-clone run).
    let started = boot.out("started");
    assert!(
        ["notify active running", "notify active reload"].contains(&started.trim()),
        "started as {started:?}: {}",
        report()
    );
    let security = boot.out("security.txt");
    let exposure = security
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    eprintln!("systemd-analyze security vitalsd: {}", exposure.trim());
    eprintln!(
        "the daemon's idle RSS under systemd: {}",
        boot.out("idle-rss").trim()
    );

    let readings = subscriber.readings();
    let serial: Vec<_> = readings
        .iter()
        .filter(|reading| reading["device"]["transport"] == "serial")
        .collect();
    assert!(!serial.is_empty(), "no serial reading; {}", report());
    assert_eq!(serial[0]["measured_at"], spot.measured_at_utc());
    let values: Vec<serde_json::Value> = serial[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].clone())
        .collect();
    assert_eq!(
        values,
        [
            serde_json::json!(spot.spo2),
            serde_json::json!(spot.pulse_rate)
        ],
        "{}",
        serial[0]
    );
    let scan = boot.out("scan.json");
    assert!(
        scan.contains("00:AA:01:01:00:01"),
        "the daemon's scan did not hear the cuff: {scan}\n{}",
        boot.out("scan.err")
    );
    let journal = boot.out("journal.log");
    assert!(
        journal.contains("Bluetooth scanning. adapter=hci0"),
        "{}",
        report()
    );

    // Started again in place under systemd: the same main PID, no restart counted, still active.
    let pids: Vec<String> = boot
        .out("fleet-pids")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(pids.len(), 4, "{}", report());
    assert_eq!(
        (pids[0] == pids[1], pids[2].as_str(), pids[3].as_str()),
        (true, "0", "active"),
        "{}",
        report()
    );
    assert_eq!(
        boot.out("drop-in-dir").trim(),
        "root:vitalsd 770",
        "{}",
        report()
    );
    let done = subscriber
        .messages()
        .iter()
        .rev()
        .find(|m| {
            m.topic == "vitalsd/v1/hub-0001/cmd/fleet-1/state" && m.json()["state"] == "successful"
        })
        .map(|m| m.json());
    assert!(
        done.is_some(),
        "set_serial_ports did not succeed; {}",
        report()
    );

    assert_eq!(boot.out("restarts").trim(), "1", "{}", report());
    assert!(
        boot.out("watchdog.txt")
            .to_lowercase()
            .contains("watchdog timeout"),
        "systemd did not say why it restarted the daemon: {}",
        boot.out("watchdog.txt")
    );
    assert_eq!(boot.out("stopped").trim(), "inactive 0", "{}", report());
    let states: Vec<String> = subscriber
        .messages()
        .iter()
        .filter(|m| m.topic == "vitalsd/v1/hub-0001/status")
        .map(|m| m.json()["state"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("offline"),
        "{states:?}"
    );
    let retained = Subscriber::start(broker.port, "vitalsd/v1/hub-0001/status");
    assert!(
        wait_until(Duration::from_secs(10), || !retained.messages().is_empty()),
        "no retained status"
    );
    assert_eq!(retained.messages()[0].json()["state"], "offline");
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Fails the test, with the fix, when a prerequisite the packaging needs is missing.
fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the package tests build in and install into chroots, which needs root: run `cargo test` as root (CI does)"
    );
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("lintian", "lintian"),
        ("dpkg-deb", "dpkg"),
        ("unshare", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(
            found,
            "the package tests need `{tool}`: apt-get install {package} (or run .ci/run)"
        );
    }
}

/// Runs one of the repository's scripts and returns the last line it printed (the path it made); fails
/// the test with its output when it fails.
fn script(name: &str, argument: &str) -> PathBuf {
    let output = Command::new(Path::new(REPO).join("scripts").join(name))
        .arg(argument)
        .current_dir(REPO)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|error| panic!("cannot run scripts/{name}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/{name} {argument} failed (its messages are above):\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default().trim();
    Path::new(REPO).join(last)
}

/// The packages built in this test run. Builds take both cores, so they run one at a time, and not while
/// the systemd VM boots: TCG is CPU-bound, and a starved guest's virtual Bluetooth controllers miss the
/// kernel's HCI timeouts.
static BUILDS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// The package for `arch`, built once per test run.
fn package(arch: &str) -> PathBuf {
    require_prerequisites();
    let mut builds = BUILDS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, deb)) = builds.iter().find(|(built, _)| built == arch) {
        return deb.clone();
    }
    let deb = script("package", arch);
    assert!(
        deb.exists(),
        "scripts/package printed {deb:?}, which does not exist"
    );
    builds.push((arch.to_string(), deb.clone()));
    deb
}

/// The lintian warnings README.md justifies, from its list under "Lintian".
fn justified_warnings() -> Vec<String> {
    static WARNINGS: OnceLock<Vec<String>> = OnceLock::new();
    WARNINGS
        .get_or_init(|| {
            let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
            let section = readme
                .split("\n#### Lintian\n")
                .nth(1)
                .expect("README.md has a \"#### Lintian\" section");
            let section = section.split("\n#").next().unwrap();
            section
                .lines()
                .filter_map(|line| line.strip_prefix("- `"))
                .filter_map(|rest| rest.split('`').next())
                .map(str::to_string)
                .collect()
        })
        .clone()
}

fn check_lintian(arch: &str) {
    let deb = package(arch);
    let output = Command::new("lintian")
        .args(["--allow-root", "--tag-display-limit", "0", "--display-info"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors for {deb:?}:\n{report}");
    let justified = justified_warnings();
    let unjustified: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("W: "))
        .filter(|line| {
            let tag = line.split_whitespace().nth(2).unwrap_or_default();
            !justified.iter().any(|known| known == tag)
        })
        .collect();
    assert!(
        unjustified.is_empty(),
        "lintian warnings that README.md (\"#### Lintian\") does not justify:\n{}\n\nfull report:\n{report}",
        unjustified.join("\n")
    );
    eprintln!(
        "{}: {} bytes; lintian:\n{report}",
        deb.display(),
        std::fs::metadata(&deb).unwrap().len()
    );
}

/// A private copy of a clean Debian 12 root, removed on drop.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn copy_of(clean: &Path, arch: &str) -> Root {
        let dir = Path::new(REPO).join(format!(
            "target/package-tests/{arch}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let copied = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(clean)
            .arg(&dir)
            .status()
            .expect("run cp");
        assert!(copied.success(), "cannot copy {clean:?} to {dir:?}");
        Root { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.join(inside.trim_start_matches('/'))
    }

    /// A command run inside the root, with the host's /dev (for the pseudo-terminal) and a /proc mounted
    /// in a private mount namespace, so the mounts end with the command.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "set -e; root=$1; shift; mount --rbind /dev \"$root/dev\"; \
                 mount -t proc proc \"$root/proc\"; exec chroot \"$root\" \"$@\"",
            )
            .arg("in-root")
            .arg(&self.dir)
            .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "TZ=UTC"])
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {args:?} in the root: {error}"))
    }

    #[track_caller]
    fn run_ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{args:?} failed in the root:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn spawn(&self, args: &[&str], log: &Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        self.command(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {args:?} in the root: {error}"))
    }

    /// The numeric id of a user or group in the root's own databases.
    fn id_of(&self, database: &str, name: &str) -> u32 {
        let text = std::fs::read_to_string(self.path(&format!("etc/{database}"))).unwrap();
        text.lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields[0] == name).then(|| fields[2].parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {name} in the root's /etc/{database}:\n{text}"))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process in the root, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check_installed(arch: &str) {
    let deb = package(arch);
    let clean = script("build-root", &format!("bookworm-{arch}"));
    let root = Root::copy_of(&clean, arch);
    let deb_name = deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(&deb, root.path(&format!("tmp/{deb_name}"))).unwrap();

    // apt resolves the dependencies against the root's own packages; bluez (recommended) is not in it,
    // and apt goes on without it.
    let installed = root.run_ok(&["apt-get", "install", "-y", &format!("/tmp/{deb_name}")]);
    assert!(
        installed.contains("Setting up vitalsd"),
        "apt did not set up vitalsd:\n{installed}"
    );

    // What the package put where, and what its postinst did.
    for file in [
        "usr/bin/vitalsd",
        "lib/systemd/system/vitalsd.service",
        "usr/lib/sysusers.d/vitalsd.conf",
        "usr/lib/tmpfiles.d/vitalsd.conf",
        "usr/share/doc/vitalsd/README",
        "usr/share/doc/vitalsd/vitalsd.reading.v1.schema.json",
        "usr/share/man/man1/vitalsd.1.gz",
        "usr/share/man/man1/vitalsd-run.1.gz",
        "usr/share/bash-completion/completions/vitalsd",
        "etc/vitalsd/vitalsd.toml",
        "etc/vitalsd/vitalsd.toml.d",
    ] {
        assert!(
            root.path(file).exists(),
            "the package did not install /{file}"
        );
    }
    // Enabled, not started (no systemd runs in a chroot, and mqtt.url is unset anyway). The link is
    // absolute, so it is read, not followed: on the host it would lead outside the root.
    let wants = root.path("etc/systemd/system/multi-user.target.wants/vitalsd.service");
    assert_eq!(
        std::fs::read_link(&wants).ok(),
        Some(PathBuf::from("/lib/systemd/system/vitalsd.service")),
        "the package did not enable the unit"
    );
    let vitalsd_gid = root.id_of("group", "vitalsd");
    let group_line = |group: &str| {
        std::fs::read_to_string(root.path("etc/group"))
            .unwrap()
            .lines()
            .find(|line| line.starts_with(&format!("{group}:")))
            .unwrap_or_default()
            .to_string()
    };
    // Serial devices are root:dialout; the unit adds bluetooth with SupplementaryGroups=, which needs
    // the group to exist.
    assert!(
        group_line("dialout").contains("vitalsd"),
        "vitalsd is not in dialout: {}",
        group_line("dialout")
    );
    assert!(!group_line("bluetooth").is_empty(), "no bluetooth group");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.path("etc/vitalsd")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (vitalsd_gid, 0o750));
    let meta = std::fs::metadata(root.path("etc/vitalsd/vitalsd.toml")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (vitalsd_gid, 0o640));
    // Group-writable for the fleet's drop-in (set_serial_ports).
    let meta = std::fs::metadata(root.path("etc/vitalsd/vitalsd.toml.d")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (vitalsd_gid, 0o770));
    let meta = std::fs::metadata(root.path("var/lib/vitalsd")).unwrap();
    assert_eq!(meta.uid(), root.id_of("passwd", "vitalsd"));

    // `--version` names the git revision the package was built from.
    let version = root.run_ok(&["vitalsd", "--version"]);
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(REPO)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        version.trim(),
        format!("vitalsd {} ({revision})", env!("CARGO_PKG_VERSION"))
    );

    // The shipped configuration is refused until the operator names a broker, then accepted.
    let refused = root.run(&["vitalsd", "check-config"]);
    assert!(
        !refused.status.success(),
        "check-config accepted a configuration without mqtt.url"
    );
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(refusal.contains("mqtt.url: missing"), "{refusal}");
    // Held until the test ends, so no other test's broker takes the port.
    let lease = lease_port();
    let port = lease.port;
    let config_path = root.path("etc/vitalsd/vitalsd.toml");
    let shipped = std::fs::read_to_string(&config_path).unwrap();
    let edited = shipped.replacen(
        "#url = \"mqtt://127.0.0.1:1883\"",
        &format!("url = \"mqtt://127.0.0.1:{port}\""),
        1,
    );
    assert_ne!(
        edited, shipped,
        "the shipped configuration has no #url line to set"
    );
    std::fs::write(&config_path, &edited).unwrap();
    let accepted = root.run_ok(&["vitalsd", "check-config"]);
    assert!(accepted.contains(": ok"), "{accepted}");

    // The smoke scenario: the root's own Mosquitto, a Nonin 9560 on a pseudo-terminal that belongs to
    // root:dialout 0660 like a USB serial adapter, and the daemon as the vitalsd user, all under qemu-user.
    std::fs::write(
        root.path("tmp/mosquitto.conf"),
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"),
    )
    .unwrap();
    let broker = Running(root.spawn(
        &["mosquitto", "-c", "/tmp/mosquitto.conf"],
        &root.path("tmp/mosquitto.log"),
    ));
    wait_for(
        "the root's Mosquitto to listen",
        Duration::from_secs(30),
        || listens_on(broker.0.id(), port),
        || std::fs::read_to_string(root.path("tmp/mosquitto.log")).unwrap_or_default(),
    );
    let mut port_device = SimulatedPort::plug_in(&root.path("srv/by-id/usb-Nonin_9560-if00-port0"));
    let dialout = root.id_of("group", "dialout");
    nix::unistd::chown(
        port_device.tty(),
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(dialout)),
    )
    .unwrap();
    std::fs::set_permissions(
        port_device.tty(),
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )
    .unwrap();
    // A drop-in, as an operator would write one: the device, and a clock the hub may trust (a chroot's
    // kernel clock may not say it is NTP-synchronised, and the hub would hold the reading).
    std::fs::write(
        root.path("etc/vitalsd/vitalsd.toml.d/50-smoke.toml"),
        "[hub]\nclock = \"trusted\"\n\n[[serial]]\npath = \"/srv/by-id/usb-Nonin_9560-if00-port0\"\nprotocol = \"nonin-df13\"\n",
    )
    .unwrap();
    // systemd would create the runtime directory (RuntimeDirectory=); in the chroot the test does.
    let vitalsd_uid = root.id_of("passwd", "vitalsd");
    std::fs::create_dir_all(root.path("run/vitalsd")).unwrap();
    nix::unistd::chown(
        &root.path("run/vitalsd"),
        Some(nix::unistd::Uid::from_raw(vitalsd_uid)),
        Some(nix::unistd::Gid::from_raw(vitalsd_gid)),
    )
    .unwrap();
    let subscriber = Subscriber::start(port, "vitalsd/v1/#");
    // Debian 12's qemu-user (7.2) lacks the termios2 ioctls (TCGETS2, TCSETS2) the serial library sets a
    // port up with, and fails them with "Function not implemented"; a hub's kernel has them. The daemon
    // therefore runs under Debian 13's qemu-user (10.0, a static binary) from the build root.
    let emulator = match arch {
        "arm64" => "qemu-aarch64",
        _ => "qemu-arm",
    };
    let build_root = script("build-root", "trixie-cross");
    std::fs::copy(
        build_root.join(format!("usr/bin/{emulator}")),
        root.path(&format!("usr/local/bin/{emulator}")),
    )
    .unwrap_or_else(|error| panic!("cannot copy the build root's {emulator}: {error}"));
    let emulator = format!("/usr/local/bin/{emulator}");
    let daemon_log = root.path("tmp/vitalsd.log");
    let daemon = Running(root.spawn(
        &[
            "setpriv",
            "--reuid=vitalsd",
            "--regid=vitalsd",
            "--init-groups",
            "--",
            &emulator,
            "/usr/bin/vitalsd",
            "run",
            "--config",
            "/etc/vitalsd/vitalsd.toml",
        ],
        &daemon_log,
    ));
    let log = || std::fs::read_to_string(&daemon_log).unwrap_or_default();
    let online = || {
        subscriber
            .messages()
            .iter()
            .any(|m| m.topic == "vitalsd/v1/hub-0001/status" && m.json()["state"] == "online")
    };
    wait_for(
        "the daemon's online status",
        Duration::from_secs(60),
        online,
        log,
    );

    // Idle: connected, nothing to do. Under qemu-user the resident size includes the emulator's own.
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss_kib = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id()))
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();

    let spot = SpotCheck::numbered(7);
    port_device.write(&spot.frame());
    wait_for(
        "the reading at the subscriber",
        Duration::from_secs(60),
        || subscriber.wait_for_unique_readings(1, Duration::from_millis(100)),
        log,
    );
    let reading = subscriber.readings().remove(0);
    support::schema::assert_valid_reading(&reading);
    assert_eq!(
        reading["device"]["id"], "serial:usb-Nonin_9560-if00-port0",
        "{reading}"
    );
    assert_eq!(reading["measured_at"], spot.measured_at_utc());
    let values: Vec<(String, serde_json::Value)> = reading["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["value"].clone()))
        .collect();
    assert_eq!(
        values,
        [
            ("spo2".to_string(), serde_json::json!(spot.spo2)),
            ("pulse_rate".to_string(), serde_json::json!(spot.pulse_rate)),
        ],
        "{reading}"
    );
    drop(daemon);
    drop(broker);
    let binary_size = std::fs::metadata(root.path("usr/bin/vitalsd"))
        .unwrap()
        .len();
    eprintln!(
        "{arch}: /usr/bin/vitalsd is {binary_size} bytes; the daemon's idle RSS under qemu-user is {idle_rss_kib} KiB"
    );

    // Reinstalling keeps the operator's edit of the conffile; purging removes the configuration but keeps
    // the outbox in /var/lib/vitalsd.
    root.run_ok(&["dpkg", "-i", &format!("/tmp/{deb_name}")]);
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), edited);
    root.run_ok(&["apt-get", "purge", "-y", "vitalsd"]);
    assert!(
        !root.path("etc/vitalsd/vitalsd.toml").exists(),
        "purge left the configuration"
    );
    assert!(!root.path("usr/bin/vitalsd").exists());
    assert!(
        root.path("var/lib/vitalsd/outbox.db").exists(),
        "purge removed the outbox, which may hold readings not yet delivered"
    );
}
