//! The hub's clocks as a scenario controls them: the daemon's test hooks for "is the clock synchronised?"
//! and the boot id, and libfaketime for a wall clock that is wrong and then stepped, as NTP steps it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

use super::daemon::DaemonWorld;

/// The daemon's test hook standing in for the kernel's "synchronised" answer (`src/clock.rs`).
pub const SYNC_STATE_FILE_ENV: &str = "VITALSD_TEST_CLOCK_SYNC_FILE";
/// The daemon's test hook standing in for `/proc/sys/kernel/random/boot_id` (`src/clock.rs`).
pub const BOOT_ID_FILE_ENV: &str = "VITALSD_TEST_BOOT_ID_FILE";

/// Fails the test, with the fix, when libfaketime is not installed.
pub fn libfaketime() -> PathBuf {
    let mut candidates = vec![PathBuf::from(
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    )];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"));
    candidates
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "the hub clock scenarios need libfaketime, and /usr/lib/<multiarch>/faketime/libfaketime.so.1 \
                 is not installed.\nInstall it with: sudo apt-get install libfaketime"
            )
        })
}

/// Replaces a file's content in one step: the daemon (and libfaketime, which rereads its file at every
/// clock read) must never see it empty or half written.
pub fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).expect("write clock hook file");
    std::fs::rename(&temporary, path).expect("replace clock hook file");
}

/// The files through which a scenario tells the daemon what its clocks say.
pub struct HubClockControl {
    sync_file: PathBuf,
    boot_id_file: PathBuf,
    /// libfaketime's offset file, when the scenario fakes the wall clock.
    faketime_file: Option<PathBuf>,
}

impl HubClockControl {
    /// Hook files in the world's directory: the kernel says "not synchronised", the boot id is `boot_id`,
    /// and the wall clock is the real one.
    pub fn new(world: &DaemonWorld, boot_id: &str) -> HubClockControl {
        let control = HubClockControl {
            sync_file: world.dir.path().join("clock-sync-state"),
            boot_id_file: world.dir.path().join("boot-id"),
            faketime_file: None,
        };
        control.set_synchronized(false);
        control.set_boot_id(boot_id);
        control
    }

    /// Runs the daemon's wall clock through libfaketime, starting at `offset` (`"-2d"`, `"+0"`): the
    /// monotonic and boot-time clocks stay real, as they do when NTP steps the wall clock.
    pub fn with_faketime(mut self, world: &DaemonWorld, offset: &str) -> HubClockControl {
        let path = world.dir.path().join("faketime-offset");
        write_atomically(&path, offset);
        self.faketime_file = Some(path);
        self
    }

    pub fn set_synchronized(&self, synchronized: bool) {
        write_atomically(
            &self.sync_file,
            if synchronized {
                "synchronized\n"
            } else {
                "unsynchronized\n"
            },
        );
    }

    /// Takes effect at the daemon's next start (it reads the boot id once).
    pub fn set_boot_id(&self, boot_id: &str) {
        write_atomically(&self.boot_id_file, &format!("{boot_id}\n"));
    }

    /// Moves the faked wall clock, as an NTP step does.
    pub fn set_faketime(&self, offset: &str) {
        let path = self
            .faketime_file
            .as_ref()
            .expect("the scenario did not fake the wall clock");
        write_atomically(path, offset);
    }

    /// The environment of a daemon run under these clocks.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                SYNC_STATE_FILE_ENV.to_string(),
                self.sync_file.display().to_string(),
            ),
            (
                BOOT_ID_FILE_ENV.to_string(),
                self.boot_id_file.display().to_string(),
            ),
        ];
        if let Some(file) = &self.faketime_file {
            env.extend([
                (
                    "LD_PRELOAD".to_string(),
                    libfaketime().display().to_string(),
                ),
                (
                    "FAKETIME_TIMESTAMP_FILE".to_string(),
                    file.display().to_string(),
                ),
                ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
            ]);
        }
        env
    }

    /// The environment for `vitalsd status`, so its `outbox.hub_clock` answers from the same hook as the
    /// daemon's (the CLI asks the kernel itself; its clock is not faked).
    pub fn status_env(&self) -> Vec<(String, String)> {
        vec![(
            SYNC_STATE_FILE_ENV.to_string(),
            self.sync_file.display().to_string(),
        )]
    }

    /// `vitalsd status --json` as seen with this hook.
    pub fn status(&self, world: &DaemonWorld) -> serde_json::Value {
        let env = self.status_env();
        let output = world.command_with_env(&["status", "--json"], &borrow(&env));
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// Waits until the daemon has asked the hook whether the clock is synchronised twice from now on,
    /// and fails the test if it has not within `timeout`. The daemon asks once at each of its trust
    /// checks (every 2 s) and before it decides anything, so the second question means a whole check ran
    /// after this call, and what it did with held readings is done. Nothing else may ask meanwhile: no
    /// readings arriving, and no `status` from the test.
    #[track_caller]
    pub fn wait_for_a_trust_check(&self, timeout: Duration) {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watch =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify_init");
        // The directory, not the file: the file is replaced by a rename whenever the scenario changes it.
        let directory = self.sync_file.parent().expect("hook file's directory");
        watch
            .add_watch(directory, AddWatchFlags::IN_CLOSE_NOWRITE)
            .expect("watch the hook's directory");
        let name = self.sync_file.file_name().expect("hook file name");
        let mut reads = 0;
        let checked = super::wait_until(timeout, || {
            reads += watch
                .read_events()
                .unwrap_or_default()
                .iter()
                .filter(|event| event.name.as_deref() == Some(name))
                .count();
            reads >= 2
        });
        assert!(
            checked,
            "the daemon asked whether the clock is synchronised {reads} time(s) in {timeout:?}"
        );
    }

    /// How many readings the outbox holds for a trusted clock.
    pub fn held(&self, world: &DaemonWorld) -> u64 {
        self.status(world)["outbox"]["held_for_clock"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// `(String, String)` pairs as the `(&str, &str)` pairs `DaemonWorld` takes.
pub fn borrow(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A payload's RFC 3339 time field.
pub fn time_field(reading: &serde_json::Value, field: &str) -> DateTime<FixedOffset> {
    let text = reading[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {reading}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("{field} {text:?} is not RFC 3339: {error}"))
}

/// Panics unless `time` lies within `[from, to]`, naming the field.
#[track_caller]
pub fn assert_between(
    what: &str,
    time: DateTime<FixedOffset>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) {
    let time = time.to_utc();
    assert!(
        from <= time && time <= to,
        "{what} {time} is not between {from} and {to}"
    );
}

/// A device wall time as `device_time` reports it (`2024-03-15T10:20:30`).
pub fn device_time_text(time: NaiveDateTime) -> String {
    time.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// The flags of a reading, as strings.
pub fn flags(reading: &serde_json::Value) -> Vec<String> {
    reading["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("no flags in {reading}"))
        .iter()
        .map(|flag| flag.as_str().expect("flags are strings").to_string())
        .collect()
}

/// The payloads the outbox holds for a trusted clock right now (read directly, as an oracle: what the
/// daemon's own clocks said when it received them).
pub fn held_payloads(outbox: &Path) -> Vec<serde_json::Value> {
    if !outbox.exists() {
        return Vec::new();
    }
    let connection = rusqlite::Connection::open(outbox).expect("open outbox for inspection");
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    let Ok(mut query) = connection.prepare("SELECT payload FROM held ORDER BY seq") else {
        return Vec::new();
    };
    let payloads = query
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .expect("read held readings");
    payloads
        .map(|payload| serde_json::from_slice(&payload.expect("payload")).expect("held JSON"))
        .collect()
}
