//! The technician commands, run as a technician would: `check-config`, `decode` and `status`.

use crate::support::daemon::{DaemonWorld, BINARY};

fn run(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(BINARY)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .expect("run vitalsd");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_error_with_its_key_path() {
    let world = DaemonWorld::new();
    std::fs::write(
        world.config_path(),
        "[hub]\nid = \"Hub 1\"\n\n[mqtt]\nurl = \"htp://broker\"\nkeep_alive_s = \"soon\"\npasword_file = \"/x\"\n\n\
         [[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df99\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&[
        "check-config",
        "--config",
        world.config_path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    for path in [
        "hub.id",
        "hub.state_dir",
        "mqtt.url",
        "mqtt.keep_alive_s",
        "mqtt.pasword_file",
        "serial[0].protocol",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&format!("{path}:"))),
            "no error for {path} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("unsupported scheme \"htp\""), "{stderr}");
}

#[test]
fn check_config_reads_the_tls_and_password_files_as_run_would() {
    let world = DaemonWorld::new();
    let dir = world.dir.path();
    let garbage_ca = dir.join("ca.pem");
    std::fs::write(&garbage_ca, "not a certificate\n").unwrap();
    let empty_password = dir.join("password");
    std::fs::write(&empty_password, "\n").unwrap();
    let write_config = |ca: &std::path::Path| {
        world.write_config(
            "mqtts://127.0.0.1:8883",
            &[
                &format!("ca_file = \"{}\"", ca.display()),
                "username = \"hub\"",
                &format!("password_file = \"{}\"", empty_password.display()),
            ],
            &[],
        );
    };
    write_config(&garbage_ca);
    let config = world.config_path();
    let (code, _, stderr) = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "mqtt.ca_file: {}: no PEM certificate found",
            garbage_ca.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mqtt.password_file: {}: empty; the file must hold the password",
            empty_password.display()
        )),
        "{stderr}"
    );

    // With a real CA and a password, the same configuration passes.
    std::fs::write(&empty_password, "s3cret\n").unwrap();
    write_config(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/tls/ca.pem"
    )));
    let (code, stdout, stderr) = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("with TLS"), "{stdout}");
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let (code, stdout, stderr) = run(&[
        "check-config",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/vitalsd.toml"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn decode_prints_the_reading_of_a_captured_frame() {
    let (code, stdout, stderr) = run(&[
        "decode",
        "nonin-df13",
        "00 02 00 0D 00 0E 20 24 03 15 10 20 30 00 02 00 00 48 00 61 67 03",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let reading: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    crate::assert_valid_reading(&reading);
    assert_eq!(reading["hub_id"], "decode");
    assert_eq!(reading["measured_at"], "2024-03-15T10:20:30+00:00");
    assert_eq!(reading["values"][0]["value"], 97);
    assert_eq!(reading["values"][1]["value"], 72);
    let (code, stdout, stderr) = run(&["decode", "nonin-df13", "zz"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.contains("not a hex digit"), "{stderr}");
}

#[test]
fn a_device_time_that_happens_twice_in_the_hub_zone_is_taken_as_the_earlier_instant() {
    // 2026-10-25 02:30 happens twice in Berlin: at 00:30 UTC (summer time) and again at 01:30 UTC.
    let frame = "00 02 00 0D 00 0E 20 26 10 25 02 30 00 00 02 00 00 48 00 61 58 03";
    for (zone, expected) in [
        ("Europe/Berlin", "2026-10-25T02:30:00+02:00"),
        ("UTC", "2026-10-25T02:30:00+00:00"),
    ] {
        let output = std::process::Command::new(BINARY)
            .args(["decode", "nonin-df13", frame])
            .env("TZ", zone)
            .output()
            .expect("run vitalsd");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let reading: serde_json::Value =
            serde_json::from_str(stdout.trim()).expect("one JSON line");
        assert_eq!(reading["measured_at"], expected, "in {zone}");
        assert_eq!(reading["time_source"], "device", "in {zone}");
    }
}

#[test]
fn status_run_by_someone_who_cannot_read_the_state_directory_fails_instead_of_showing_nothing_pending(
) {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs `vitalsd status` as another user and needs root: run the HIL suite as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("outbox.db"), b"").unwrap();
    let config = dir.path().join("vitalsd.toml");
    let text = format!(
        "[hub]\nid = \"hub-test\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[ble]\nenabled = false\n",
        state.display()
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A copy, so that a checkout the other user cannot enter does not stop the run before it starts.
    let binary = dir.path().join("vitalsd");
    std::fs::copy(BINARY, &binary).unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&binary)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn decode_reads_bluetooth_characteristics_one_message_per_slash() {
    let (code, stdout, stderr) = run(&[
        "decode",
        "blood-pressure-measurement",
        "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let reading: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    crate::assert_valid_reading(&reading);
    assert_eq!(reading["device"]["transport"], "ble");
    assert_eq!(reading["values"][0]["name"], "systolic");
    assert_eq!(reading["values"][0]["value"], 138);
    assert_eq!(reading["user_id"], 1);
    assert_eq!(
        reading["time_source"], "hub",
        "year 0 is a clock that was never set"
    );

    let (code, stdout, stderr) = run(&[
        "decode",
        "body-composition-measurement",
        "00 10 E1 00 / 00 1E FF FF 03 14 80 3E 08 07",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "two packets, one record");
    let names: Vec<&str> = lines[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "body_fat_percentage",
            "impedance",
            "body_weight",
            "body_height"
        ]
    );

    // An advertisement that is not a finished weighing decodes to nothing, successfully.
    let (code, stdout, _) = run(&["decode", "xiaomi-scale", "02 9E 43 E5 07 04 0B 10 13 01"]);
    assert_eq!((code, stdout.trim()), (0, ""));

    // A message whose flags promise more than it holds is an error, not a shifted parse.
    let (code, stdout, stderr) = run(&[
        "decode",
        "glucose-measurement",
        "1B 00 00 E2 07 04 1A 0B 09 1E 1E 00 12 05 01",
    ]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("too short"), "{stderr}");
}

#[test]
fn decode_prints_every_frame_of_a_stream() {
    let (code, stdout, stderr) = run(&["decode", "nonin-df8", "80486100", "81025f00", "837f7f00"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["values"][1]["value"], 130);
    assert_eq!(lines[2]["values"][0]["special"], "missing");
    for line in &lines {
        crate::assert_valid_reading(line);
    }
}

#[test]
fn decode_reads_a_captured_contec_download() {
    // The device's side of a download: one session, started 2024-03-14 22:30:00, 6 stored bytes (three
    // samples), its data, then a live message.
    let (code, stdout, stderr) = run(&[
        "decode",
        "contec-cms50",
        "0C 80 0C 80 0A 80 80 81",
        "07 80 80 80 94 98 83 8E 12 80 80 80 96 9E 80 80 08 80 80 80 86 80 80 80",
        "0F 82 DE 82 DE C2 DE C2",
        "01 80 85 B3 96 C8 E2 FF FF",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, u64)> = lines
        .iter()
        .map(|r| {
            (
                r["time_source"].as_str().unwrap().to_string(),
                r["measured_at"].as_str().unwrap()[..19].to_string(),
                r["values"][1]["value"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 4, "{stdout}");
    // The live message that follows the data is what shows the session ended cleanly, so it comes first.
    assert_eq!((summary[0].0.as_str(), summary[0].2), ("hub", 72));
    assert_eq!(
        summary[1..],
        [
            ("device".to_string(), "2024-03-14T22:30:00".to_string(), 130),
            ("device".to_string(), "2024-03-14T22:30:01".to_string(), 66),
            ("device".to_string(), "2024-03-14T22:30:02".to_string(), 66),
        ]
    );
    for line in &lines {
        crate::assert_valid_reading(line);
    }
}

#[test]
fn decode_reads_a_captured_contec_download_that_ends_with_the_data() {
    let (code, stdout, stderr) = run(&[
        "decode",
        "contec-cms50",
        "0A 80 80 81 07 80 80 80 94 98 83 8E 12 80 80 80 96 9E 80 80 08 80 80 80 86 80 80 80",
        "0F 82 DE 82 DE C2 DE C2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
}

#[test]
fn decode_rejects_bad_input_with_a_clear_error_and_no_panic() {
    #[track_caller]
    fn check(args: &[&str], expected_in_stderr: &str) {
        let (code, _, stderr) = run(args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(stderr.contains(expected_in_stderr), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    check(
        &[
            "decode",
            "nonin-df13",
            "00 02 00 0D 00 0E 20 24 03 15 10 20 30 00 02 00 00 48 00 61 68 03",
        ],
        "checksum",
    );
    check(
        &["decode", "nonin-df13", "00 02 00 0D 00 0E 20 24"],
        "truncated",
    );
    check(&["decode", "nonin-df13", "zz"], "not a hex digit");
    check(&["decode", "nonin-df13", "123"], "odd number of hex digits");
    check(&["decode", "no-such-protocol", "00"], "unknown protocol");
}

#[test]
fn help_describes_each_command_under_its_own_name() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    let description = |command: &str| {
        stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(command))
            .map(|line| line.trim_start()[command.len()..].trim().to_string())
            .unwrap_or_default()
    };
    assert!(description("status").contains("outbox"), "{stdout}");
    assert!(description("scan").contains("Bluetooth"), "{stdout}");
    assert!(!description("scan").contains("outbox"), "{stdout}");
    for command in [
        "run",
        "check-config",
        "decode",
        "scan",
        "pair",
        "unpair",
        "serial",
        "devices",
        "status",
    ] {
        assert!(
            !description(command).is_empty(),
            "{command} has no description:\n{stdout}"
        );
    }
}

#[test]
fn decode_lists_its_protocols() {
    let (code, stdout, _) = run(&["decode", "--list"]);
    assert_eq!(code, 0);
    for protocol in vitalsd::decode::Protocol::ALL {
        let name = protocol.name();
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from:\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().count(), vitalsd::decode::Protocol::ALL.len());
}

#[test]
fn status_works_before_the_daemon_ever_ran() {
    let world = DaemonWorld::new();
    world.write_config("mqtt://127.0.0.1:1", &[], &[]);
    let status = world.status();
    assert_eq!(status["outbox"]["pending"], 0);
    assert_eq!(status["outbox"]["exists"], false);
    let output = world.command(&["status"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("pending readings"));
}

/// `vitalsd status | head -3`: the reader may go before `status` has printed everything.
#[test]
fn status_whose_reader_went_away_ends_quietly_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let world = DaemonWorld::new();
    world.write_config("mqtt://127.0.0.1:1", &[], &[]);
    // A pipe whose reading end is closed before `status` writes its first line.
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let output = std::process::Command::new(BINARY)
        .args(["status", "--config"])
        .arg(world.config_path())
        .stdout(std::process::Stdio::from(writer))
        .output()
        .expect("run vitalsd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "status panicked: {stderr}"
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{}",
        output.status
    );
}
