//! The serial link: garbage and truncated frames are counted and skipped, an unplugged device is picked
//! up again, and a continuous stream becomes spot readings.

use std::time::Duration;

use crate::delivery::rig;
use crate::support::daemon::SerialEntry;
use crate::support::nonin::{df8_frame, SpotCheck};
use crate::support::pty::SimulatedPort;
use crate::support::rig::Lab;
use crate::support::wait_until;

#[test]
fn garbage_and_truncated_frames_are_counted_and_skipped_and_good_frames_after_them_arrive() {
    let mut rig = rig();
    let _daemon = rig.world.start();
    let good = [
        SpotCheck::numbered(1),
        SpotCheck::numbered(2),
        SpotCheck::numbered(3),
    ];
    let mut bad_checksum = SpotCheck::numbered(50).frame();
    bad_checksum[20] ^= 0xff;
    let truncated = &SpotCheck::numbered(51).frame()[..12];

    let mut wire = vec![0xde, 0xad, 0xbe, 0xef, 0x55, 0x00, 0x02];
    wire.extend(good[0].frame());
    wire.extend(&bad_checksum);
    wire.extend(truncated);
    wire.extend(good[1].frame());
    wire.extend([0x03, 0x03, 0x00]);
    wire.extend(good[2].frame());
    rig.port.write(&wire);

    // The last good frame is the sentinel: anything the damaged bytes became would have come before it.
    assert!(
        rig.subscriber
            .wait_for_unique_readings(3, Duration::from_secs(20)),
        "log:\n{}",
        rig.world.log()
    );
    let readings = rig.subscriber.readings();
    let times: Vec<_> = readings
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        times,
        good.iter()
            .map(SpotCheck::measured_at_utc)
            .collect::<Vec<_>>()
    );
    let counted = wait_until(Duration::from_secs(5), || {
        rig.world.status()["counters"]["frames_rejected"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    assert!(
        counted,
        "rejected frames were not counted: {}",
        rig.world.status()
    );
    assert!(
        rig.world.status()["counters"]["bytes_skipped"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn an_unplugged_device_is_picked_up_again_when_it_returns() {
    let mut rig = rig();
    let mut daemon = rig.world.start();
    rig.port.write(&SpotCheck::numbered(1).frame());
    assert!(rig
        .subscriber
        .wait_for_unique_readings(1, Duration::from_secs(20)));
    // Unplugged in the middle of a frame.
    rig.port.write(&SpotCheck::numbered(2).frame()[..10]);
    let tty = rig.port.tty().to_path_buf();
    rig.port.unplug();
    daemon.wait_closed(&tty, Duration::from_secs(10));
    assert!(daemon.is_running(), "vitalsd died when the device vanished");
    rig.port.plug();
    daemon.wait_opened(&rig.port, Duration::from_secs(10));
    rig.port.write(&SpotCheck::numbered(3).frame());
    assert!(
        rig.subscriber
            .wait_for_unique_readings(2, Duration::from_secs(20)),
        "log:\n{}",
        rig.world.log()
    );
    let times: Vec<_> = rig
        .subscriber
        .readings()
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        times,
        [
            SpotCheck::numbered(1).measured_at_utc(),
            SpotCheck::numbered(3).measured_at_utc()
        ]
    );
}

/// A smoke test of the spot rule on the daemon's own receive times; the rule's timing cases (placements,
/// bursts, gaps) are table tests in `src/spot.rs`, with exact times. The simulator writes ten frames a
/// second (the device sends one) until the spot arrives, so a stalled machine only makes it wait longer.
#[test]
fn a_continuous_stream_becomes_one_spot_reading_per_stable_placement() {
    let lab = Lab::new();
    let (subscriber, world) = (&lab.subscriber, &lab.world);
    let mut port = lab.plug_in("usb-Nonin_OEM-if00-port0");
    lab.configure(&[SerialEntry::of(&port, "nonin-df8")
        .with_id("oximeter-1")
        .with(&["spot_stable_s = 1.0", "spot_repeat_s = 3600"])]);
    let daemon = world.start();
    daemon.wait_opened(&port, Duration::from_secs(10));
    let stream_until = |port: &mut SimulatedPort, frame: [u8; 4], readings: usize| {
        let arrived = wait_until(Duration::from_secs(20), || {
            port.write(&frame);
            // The pace of the simulated device, not a wait for the daemon.
            std::thread::sleep(Duration::from_millis(100));
            subscriber.unique_reading_ids().len() >= readings
        });
        assert!(arrived, "no spot reading {readings}; log:\n{}", world.log());
    };
    // First placement: steady values.
    stream_until(&mut port, df8_frame(72, 97, false), 1);
    // The finger moves: artifacts, then a second steady placement, whose spot is the sentinel: a second
    // spot of the first placement would have come before it.
    for _ in 0..3 {
        port.write(&df8_frame(140, 80, true));
    }
    stream_until(&mut port, df8_frame(80, 95, false), 2);
    let readings = subscriber.readings();
    assert_eq!(
        readings.len(),
        2,
        "one spot reading per placement, got {readings:#?}"
    );
    let values = |r: &serde_json::Value| {
        (
            r["values"][0]["value"].as_u64(),
            r["values"][1]["value"].as_u64(),
        )
    };
    assert_eq!(values(&readings[0]), (Some(97), Some(72)));
    assert_eq!(values(&readings[1]), (Some(95), Some(80)));
    assert_eq!(readings[0]["time_source"], "hub");
    assert_eq!(readings[0]["device"]["id"], "oximeter-1");
}

/// A 9560 whose clock is two years behind. The hub asks for the clock as the port opens, the oximeter
/// answers, and the spot-check it then takes, stamped by that clock, is published at the time it was taken,
/// with the offset the hub measured.
#[test]
fn a_nonin_9560_whose_clock_is_behind_has_its_spot_checks_dated_by_the_clock_it_reports() {
    use chrono::{Datelike, Timelike};
    let mut rig = rig();
    let _daemon = rig.world.start();
    let question = [0x02, 0x72, 0x00, 0x03];
    let asked = rig
        .port
        .read_until(Duration::from_secs(20), |bytes| bytes.ends_with(&question));
    assert!(
        asked.ends_with(&question),
        "the hub did not ask for the clock: {asked:02x?}\n{}",
        rig.world.log()
    );
    // The daemon runs in UTC, so the oximeter's local time is UTC too.
    let behind = chrono::TimeDelta::days(731);
    let device_now = chrono::Utc::now().naive_utc() - behind;
    let mut answer = vec![0x02, 0xF2, 0x06];
    answer.extend(
        [
            device_now.year() - 2000,
            device_now.month() as i32,
            device_now.day() as i32,
            device_now.hour() as i32,
            device_now.minute() as i32,
            device_now.second() as i32,
        ]
        .map(|field| field as u8),
    );
    answer.push(0x03);
    rig.port.write(&answer);
    let stamped = device_now + chrono::TimeDelta::seconds(2);
    let spot = SpotCheck::at(stamped, 7, false);
    rig.port.write(&spot.frame());
    assert!(
        rig.subscriber
            .wait_for_unique_readings(1, Duration::from_secs(20)),
        "log:\n{}",
        rig.world.log()
    );
    let reading = rig.subscriber.readings().remove(0);
    let time = |key: &str| {
        chrono::DateTime::parse_from_rfc3339(reading[key].as_str().expect(key)).expect(key)
    };
    let late = time("received_at") - time("measured_at");
    assert!(
        late.num_seconds().abs() <= 10,
        "measured {late} before it was received: {reading}"
    );
    assert_eq!(reading["time_source"], "device", "{reading}");
    let flags = reading["flags"].as_array().expect("flags");
    assert!(
        flags.contains(&"device_clock_corrected".into()),
        "{reading}"
    );
    let offset = reading["device_clock"]["offset_s"]
        .as_i64()
        .expect("offset_s");
    assert!(
        (offset + behind.num_seconds()).abs() <= 5,
        "offset {offset} s: {reading}"
    );
    assert_eq!(reading["device_clock"]["set"], false, "{reading}");
    assert_eq!(
        reading["device_time"],
        stamped.format("%Y-%m-%dT%H:%M:%S").to_string(),
        "{reading}"
    );
}
