//! Architecture checks that run as tests: the boundaries ARCHITECTURE.md states, enforced mechanically.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The text of a file without its `#[cfg(test)]` module, so tests may use what production code may not.
fn production_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[track_caller]
fn check_absent(files: &[&str], forbidden: &[&str]) {
    let mut violations = Vec::new();
    for file in files {
        let path = src().join(file);
        let paths = if path.is_dir() {
            sources(&path)
        } else {
            vec![path]
        };
        for path in paths {
            let text = production_text(&path);
            for word in forbidden {
                if text.contains(word) {
                    violations.push(format!("{} mentions {word}", path.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The sans-IO modules: decoders and their dialogs (`decode/`, with the glucose record dialog and the
/// clock sync), the protocol catalogue, the model, the time model, the pipeline's `Decoding`, the
/// Bluetooth profile table and the uplink's bookkeeping. None of them is `async`, touches a file, socket or thread, or reads a clock.
#[test]
fn decoders_and_the_model_do_no_io_and_read_no_clock() {
    check_absent(
        &[
            "decode",
            "catalog.rs",
            "reading.rs",
            "codes.rs",
            "spot.rs",
            "payload.rs",
            "measurement_time.rs",
            "pipeline.rs",
            "ble/profile.rs",
            "mqtt/inflight.rs",
            "mqtt/refusal.rs",
        ],
        &[
            "tokio",
            "std::fs",
            // `fs::` and `thread::` also catch the paths imported as `use std::{fs, thread}`.
            "fs::",
            "std::net",
            "std::thread",
            "thread::",
            "Instant::now",
            "SystemTime::now",
            "Utc::now",
            "Local::now",
            "clock::hub_now",
            "clock::hub_clock",
            "clock::now_utc",
            "clock::now_local",
            "async fn",
            "btleplug",
            "tokio_serial",
            "rusqlite",
            "crate::outbox::worker",
        ],
    );
}

#[test]
fn the_outbox_knows_nothing_of_mqtt_devices_or_json() {
    check_absent(
        &["outbox"],
        &[
            "rumqttc",
            "crate::mqtt",
            "crate::serial",
            "crate::decode",
            "crate::reading",
            "serde_json",
        ],
    );
}

#[test]
fn only_the_clock_module_reads_the_clock() {
    let mut violations = Vec::new();
    for path in sources(&src()) {
        if path.ends_with("clock.rs") || path.ends_with("tidy.rs") {
            continue;
        }
        let text = production_text(&path);
        for word in [
            "Utc::now",
            "Local::now",
            "SystemTime::now",
            "libc::adjtimex",
            "libc::CLOCK_BOOTTIME",
            "random/boot_id",
        ] {
            if text.contains(word) {
                violations.push(format!("{} calls {word}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The time model's rules live in one place: no other module holds a year limit, compares a device
/// year, or keeps its own "ahead" or tolerance window.
#[test]
fn only_the_time_model_judges_device_clocks() {
    let mut violations = Vec::new();
    for path in sources(&src()) {
        if path.ends_with("measurement_time.rs") || path.ends_with("tidy.rs") {
            continue;
        }
        let text = production_text(&path);
        for word in [
            "2010",
            "2099",
            "Datelike::year",
            "TimeDelta::minutes(10)",
            "TimeDelta::minutes(2)",
        ] {
            if text.contains(word) {
                violations.push(format!("{} holds {word}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn only_app_spawns_tasks() {
    let mut violations = Vec::new();
    for path in sources(&src()) {
        // The daemon's wiring, and `vitalsd run`, which spawns its signal handler beside it.
        if ["app.rs", "cli/run.rs", "tidy.rs"]
            .iter()
            .any(|allowed| path.ends_with(allowed))
        {
            continue;
        }
        if production_text(&path).contains("tokio::spawn") {
            violations.push(path.display().to_string());
        }
    }
    assert!(
        violations.is_empty(),
        "tasks spawned outside app.rs: {violations:?}"
    );
}

#[test]
fn every_module_says_what_it_owns() {
    let missing: Vec<String> = sources(&src())
        .into_iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//! "))
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}
