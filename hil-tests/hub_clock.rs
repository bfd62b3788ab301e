//! Truthful time with a hub clock that cannot be believed yet (README "Time"): readings are held, not
//! published, while the clock is not synchronised; released with exact times once it is; published with
//! `hub_clock_unresolved` when the hub rebooted first; and the hub writes no time into a device meanwhile.
//!
//! The kernel's "synchronised" answer and the boot id come from the daemon's test hooks; a wall clock that
//! is wrong and then stepped comes from libfaketime, with the monotonic and boot-time clocks left real as
//! an NTP step leaves them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDateTime, TimeDelta, Timelike, Utc};

use crate::bluetooth::BleRig;
use crate::support::bluez::devices::{self, blood_pressure_record, date_time};
use crate::support::bluez::{uuid16, BluezSim};
use crate::support::broker::Broker;
use crate::support::clock::{
    assert_between, borrow, device_time_text, flags, held_payloads, time_field, HubClockControl,
};
use crate::support::daemon::{DaemonWorld, SerialEntry};
use crate::support::nonin::{df8_frame, SpotCheck};
use crate::support::pty::SimulatedPort;
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

const CUFF: &str = "AA:BB:CC:DD:EE:21";
/// Generous: the suite shares two cores with other builds.
const LONG: Duration = Duration::from_secs(60);

/// The wall clock now, to the second, as a device clock keeps it (the daemon runs with TZ=UTC).
fn device_now() -> NaiveDateTime {
    Utc::now().naive_utc().with_nanosecond(0).unwrap()
}

fn ble_stamp(time: NaiveDateTime) -> [u8; 7] {
    date_time(
        time.year() as u16,
        time.month() as u8,
        time.day() as u8,
        time.hour() as u8,
        time.minute() as u8,
        time.second() as u8,
    )
}

/// The reading whose device time stamp is `time`.
fn reading_stamped(readings: &[serde_json::Value], time: NaiveDateTime) -> &serde_json::Value {
    let text = device_time_text(time);
    readings
        .iter()
        .find(|reading| reading["device_time"] == text.as_str())
        .unwrap_or_else(|| panic!("no reading stamped {text} in {readings:#?}"))
}

/// How many times `line` appears in the daemon's log.
fn log_count(world: &DaemonWorld, line: &str) -> usize {
    world.log().matches(line).count()
}

#[test]
fn readings_received_before_the_hub_clock_is_synchronised_are_held_then_released_with_their_receive_times(
) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut world = DaemonWorld::new();
    world.hub_clock = "ntp";
    let mut port = world.with_nonin_9560(&broker.url());
    let clock = HubClockControl::new(&world, "3f1c9a2e-0000-4000-8000-00000000000a");
    let daemon = world.start_with_env(&borrow(&clock.env()));
    daemon.wait_opened(&port, LONG);

    // Spot-checks stamped by a device clock that is right, received while the hub cannot say so.
    let now = device_now();
    let stamps: Vec<NaiveDateTime> = (0..3).map(|i| now - TimeDelta::minutes(2 - i)).collect();
    let sent_from = Utc::now();
    for (n, stamp) in stamps.iter().enumerate() {
        port.write(&SpotCheck::at(*stamp, n as u16, false).frame());
    }
    // And one from a device clock years ahead, which an untrusted hub clock cannot call ahead.
    let far_ahead = now + TimeDelta::days(3000);
    port.write(&SpotCheck::at(far_ahead, 5, false).frame());
    assert!(
        wait_until(LONG, || clock.held(&world) == 4),
        "the readings were not held: {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    // The daemon had read them by now.
    let held_seen = Utc::now();
    clock.wait_for_a_trust_check(LONG);
    assert!(
        subscriber.reading_counts().is_empty(),
        "published before the hub clock was synchronised: {:#?}",
        subscriber.readings()
    );
    let status = clock.status(&world);
    assert_eq!(status["outbox"]["held_for_clock"], 4, "{status}");
    assert_eq!(status["outbox"]["hub_clock"], "unsynchronized", "{status}");
    // Held readings count as pending (they are the outbox's), but none is queued for the uplink.
    assert_eq!(status["outbox"]["pending"], 4, "{status}");
    assert_eq!(status["outbox"]["delivered_total"], 0, "{status}");

    let synchronized_at = Utc::now();
    clock.set_synchronized(true);
    assert!(
        subscriber.wait_for_unique_readings(4, LONG),
        "held readings were not released; status {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    let readings = subscriber.readings();
    assert_eq!(readings.len(), 4, "{readings:#?}");
    // Once the receive time is known, the device time years after it is not believed.
    let ahead = reading_stamped(&readings, far_ahead);
    crate::assert_valid_reading(ahead);
    assert_eq!(ahead["time_source"], "hub", "{ahead:#}");
    assert_eq!(
        flags(ahead),
        ["smartpoint", "device_clock_ahead"],
        "{ahead:#}"
    );
    let off = time_field(ahead, "measured_at") - time_field(ahead, "received_at");
    assert!(off.abs() < TimeDelta::milliseconds(1), "{ahead:#}");
    for stamp in &stamps {
        let reading = reading_stamped(&readings, *stamp);
        crate::assert_valid_reading(reading);
        assert_eq!(reading["time_source"], "device", "{reading:#}");
        assert_eq!(
            reading["measured_at"],
            format!("{}+00:00", device_time_text(*stamp)),
            "{reading:#}"
        );
        assert_eq!(reading["hub_clock"], "unsynchronized", "{reading:#}");
        // Neither judged ahead of an untrusted clock, nor flagged: the clock was trusted in the same boot.
        assert_eq!(flags(reading), ["smartpoint"], "{reading:#}");
        assert!(reading.get("device_clock").is_none(), "{reading:#}");
        // When it was received, not when it was released.
        assert_between(
            "received_at",
            time_field(reading, "received_at"),
            sent_from - TimeDelta::seconds(1),
            held_seen,
        );
        assert!(
            time_field(reading, "received_at").to_utc() < synchronized_at,
            "received_at is the release time: {reading:#}"
        );
    }

    // Once trusted, a reading is published straight away, saying so.
    let later = device_now();
    let sent_from = Utc::now();
    port.write(&SpotCheck::at(later, 9, false).frame());
    assert!(
        subscriber.wait_for_unique_readings(5, LONG),
        "{}",
        world.log()
    );
    let sent_to = Utc::now();
    let readings = subscriber.readings();
    let live = reading_stamped(&readings, later);
    crate::assert_valid_reading(live);
    assert_eq!(live["hub_clock"], "synchronized", "{live:#}");
    assert_eq!(live["time_source"], "device", "{live:#}");
    assert_between(
        "received_at",
        time_field(live, "received_at"),
        sent_from - TimeDelta::seconds(1),
        sent_to + TimeDelta::seconds(1),
    );
    let status = clock.status(&world);
    assert_eq!(status["outbox"]["held_for_clock"], 0, "{status}");
    assert_eq!(status["outbox"]["hub_clock"], "synchronized", "{status}");
    assert_eq!(subscriber.readings().len(), 5, "nothing published twice");
}

#[test]
fn a_cuff_read_while_the_hub_clock_is_unsynchronised_keeps_its_clock_until_the_hub_clock_is_trusted(
) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut world = DaemonWorld::new();
    world.hub_clock = "ntp";
    world.write_config(&broker.url(), &[], &[]);
    world.append_config("[ble]\nadapter = \"hci0\"\n");
    let rig = BleRig {
        broker,
        subscriber,
        world,
        sim: BluezSim::start(),
    };
    let clock = HubClockControl::new(&rig.world, "3f1c9a2e-0000-4000-8000-00000000000b");

    // A cuff whose clock is right, holding three measurements from the last half hour.
    let now = device_now();
    let mut cuff = devices::and_cuff();
    cuff.values.insert(uuid16(0x2A08), ble_stamp(now).to_vec());
    rig.sim.add_device(CUFF, cuff);
    let stamps: Vec<NaiveDateTime> = (0..3)
        .map(|i| now - TimeDelta::minutes(30 - 10 * i))
        .collect();
    let records: Vec<Vec<u8>> = stamps
        .iter()
        .enumerate()
        .map(|(i, stamp)| blood_pressure_record(120 + i as u16, 80, 93, 60, ble_stamp(*stamp)))
        .collect();
    rig.sim.store_records(CUFF, 0x2A35, &records);
    rig.pair(CUFF);

    let mut env = clock.env();
    env.push((
        "DBUS_SYSTEM_BUS_ADDRESS".to_string(),
        rig.sim.bus_address().to_string(),
    ));
    let started_at = Utc::now();
    let _daemon = rig.world.start_with_env(&borrow(&env));
    assert!(
        wait_until(LONG, || clock.held(&rig.world) == 3),
        "the cuff's records were not held: {}\nlog:\n{}",
        clock.status(&rig.world),
        rig.world.log()
    );
    // The burst is over and the cuff hung up; wait for the hub to come back for a second session too
    // (it reconnects whenever the cuff advertises), so more than one untrusted session is covered.
    let first_sessions = rig.sim.device(CUFF, |cuff| cuff.connect_attempts);
    assert!(
        wait_until(LONG, || {
            rig.sim.device(CUFF, |cuff| {
                !cuff.connected && cuff.connect_attempts > first_sessions
            }) && log_count(&rig.world, "the device clock is left as it is") >= 2
        }),
        "no second session; log:\n{}",
        rig.world.log()
    );
    let (writes, reads) = rig
        .sim
        .device(CUFF, |cuff| (cuff.writes.clone(), cuff.reads.clone()));
    assert!(
        reads.contains(&uuid16(0x2A08)),
        "the hub did not even read the cuff's clock: {reads:?}"
    );
    assert!(
        !writes.iter().any(|(uuid, _)| *uuid == uuid16(0x2A08)),
        "the hub wrote its unsynchronised time into the cuff: {writes:?}"
    );
    assert!(
        rig.subscriber.reading_counts().is_empty(),
        "published before the hub clock was synchronised: {:#?}",
        rig.subscriber.readings()
    );
    // The technician sees that the clock was read but neither compared nor set.
    assert!(
        wait_until(LONG, || {
            rig.devices_json()["devices"][0]["clock"]
                == "not compared: the hub clock was not synchronised (left as it was)"
        }),
        "devices: {}",
        rig.devices_json()
    );

    let synchronized_at = Utc::now();
    clock.set_synchronized(true);
    let readings = rig.wait_for_readings(CUFF, 3, LONG);
    assert_eq!(readings.len(), 3, "{readings:#?}");
    for stamp in &stamps {
        let reading = reading_stamped(&readings, *stamp);
        crate::assert_valid_reading(reading);
        assert_eq!(reading["kind"], "blood_pressure");
        assert_eq!(reading["time_source"], "device", "{reading:#}");
        assert_eq!(
            reading["measured_at"],
            format!("{}+00:00", device_time_text(*stamp)),
            "{reading:#}"
        );
        assert_eq!(reading["hub_clock"], "unsynchronized", "{reading:#}");
        assert!(flags(reading).is_empty(), "{reading:#}");
        // The clock was read against an untrusted hub clock: no offset to report.
        assert!(reading.get("device_clock").is_none(), "{reading:#}");
        assert_between(
            "received_at",
            time_field(reading, "received_at"),
            started_at,
            synchronized_at,
        );
    }

    // A new measurement: the next session, with a trusted clock, sets the cuff's clock before reading it.
    let measured = device_now();
    rig.sim.store_records(
        CUFF,
        0x2A35,
        &[blood_pressure_record(131, 85, 100, 70, ble_stamp(measured))],
    );
    let readings = rig.wait_for_readings(CUFF, 4, LONG);
    let trusted = reading_stamped(&readings, measured);
    crate::assert_valid_reading(trusted);
    assert_eq!(trusted["hub_clock"], "synchronized", "{trusted:#}");
    assert_eq!(trusted["time_source"], "device", "{trusted:#}");
    assert_eq!(trusted["device_clock"]["set"], true, "{trusted:#}");
    assert!(
        trusted["device_clock"]["offset_s"]
            .as_i64()
            .is_some_and(|offset| offset.abs() < 120),
        "{trusted:#}"
    );
    let writes = rig.sim.device(CUFF, |cuff| cuff.writes.clone());
    let time_write = writes
        .iter()
        .find(|(uuid, _)| *uuid == uuid16(0x2A08))
        .unwrap_or_else(|| panic!("no Date Time write once trusted: {writes:?}"));
    assert_eq!(time_write.1.len(), 7, "{time_write:?}");
    let written = NaiveDateTime::new(
        chrono::NaiveDate::from_ymd_opt(
            i32::from(u16::from_le_bytes([time_write.1[0], time_write.1[1]])),
            u32::from(time_write.1[2]),
            u32::from(time_write.1[3]),
        )
        .expect("a calendar date"),
        chrono::NaiveTime::from_hms_opt(
            u32::from(time_write.1[4]),
            u32::from(time_write.1[5]),
            u32::from(time_write.1[6]),
        )
        .expect("a time of day"),
    );
    assert_eq!(written.year(), Utc::now().year(), "wrote {written}");
    assert!(
        (written - synchronized_at.naive_utc()).num_seconds().abs() < 120,
        "wrote {written}, the hub clock was trusted at {synchronized_at}"
    );
    assert_eq!(
        rig.subscriber.readings().len(),
        4,
        "nothing published twice"
    );
    assert!(
        wait_until(LONG, || rig.devices_json()["devices"][0]["clock"]
            == "in sync"),
        "devices: {}",
        rig.devices_json()
    );
}

#[test]
fn a_stream_received_while_the_hub_clock_was_two_days_behind_is_dated_from_the_boot_clock_after_the_ntp_step(
) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut world = DaemonWorld::new();
    world.hub_clock = "ntp";
    let port = SimulatedPort::plug_in(&world.by_id("usb-Nonin_OEM-if00-port0"));
    world.write_config(
        &broker.url(),
        &[],
        &[SerialEntry::of(&port, "nonin-df8")
            .with_id("oximeter-1")
            .with(&["spot_stable_s = 3.0", "spot_repeat_s = 3600"])],
    );
    let clock = HubClockControl::new(&world, "3f1c9a2e-0000-4000-8000-00000000000c")
        .with_faketime(&world, "-2d");
    let daemon = world.start_with_env(&borrow(&clock.env()));
    daemon.wait_opened(&port, LONG);

    // A steady finger, one sample every 250 ms, until the spot reading is in the outbox.
    let stop = Arc::new(AtomicBool::new(false));
    let streaming = {
        let stop = stop.clone();
        let mut port = port;
        std::thread::spawn(move || {
            let first = Utc::now();
            while !stop.load(Ordering::SeqCst) {
                port.write(&df8_frame(72, 97, false));
                // The pace of the simulated device.
                std::thread::sleep(Duration::from_millis(250));
            }
            (port, first)
        })
    };
    let held = wait_until(LONG, || clock.held(&world) >= 1);
    stop.store(true, Ordering::SeqCst);
    let (_port, first_sent) = streaming.join().expect("the stream thread");
    let held_seen = Utc::now();
    assert!(
        held,
        "no spot reading held: {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    assert!(subscriber.reading_counts().is_empty());
    // The oracle that the daemon's wall clock really was two days behind.
    let held_now = held_payloads(&world.outbox_path());
    assert_eq!(held_now.len(), 1, "{held_now:#?}");
    assert_between(
        "held received_at",
        time_field(&held_now[0], "received_at"),
        first_sent - TimeDelta::days(2) - TimeDelta::seconds(1),
        held_seen - TimeDelta::days(2) + TimeDelta::seconds(1),
    );

    // The NTP step: the wall clock jumps two days forward, then the kernel says it is synchronised.
    clock.set_faketime("+0");
    clock.set_synchronized(true);
    assert!(
        subscriber.wait_for_unique_readings(1, LONG),
        "the spot reading was not released; status {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    // Everything the outbox delivered has reached the subscriber: a spot released twice would show.
    let status = || clock.status(&world);
    assert!(
        wait_until(LONG, || status()["outbox"]["pending"] == 0),
        "{}",
        status()
    );
    let delivered = status()["outbox"]["delivered_total"].as_u64().unwrap();
    assert!(
        subscriber.wait_for_unique_readings(delivered as usize, LONG),
        "{delivered} delivered"
    );
    let readings = subscriber.readings();
    assert_eq!(readings.len(), 1, "one spot reading: {readings:#?}");
    let spot = &readings[0];
    crate::assert_valid_reading(spot);
    assert_eq!(spot["time_source"], "hub", "{spot:#}");
    assert_eq!(spot["hub_clock"], "unsynchronized", "{spot:#}");
    assert!(flags(spot).is_empty(), "{spot:#}");
    assert!(spot.get("device_time").is_none(), "{spot:#}");
    assert_eq!(
        (
            spot["values"][0]["value"].as_u64(),
            spot["values"][1]["value"].as_u64()
        ),
        (Some(97), Some(72))
    );
    // The samples' real time, not two days before it, and not the release time either.
    let received = time_field(spot, "received_at");
    assert_between(
        "received_at",
        received,
        first_sent + TimeDelta::seconds(2),
        held_seen + TimeDelta::seconds(1),
    );
    let measured = time_field(spot, "measured_at");
    assert!(
        (measured.to_utc() - received.to_utc())
            .num_milliseconds()
            .abs()
            < 1,
        "measured_at {measured} is not the receive time {received}"
    );
    assert_eq!(clock.held(&world), 0);
}

#[test]
fn records_re_sent_after_a_reboot_with_another_hub_clock_are_queued_once_and_flagged_unresolved() {
    const N: usize = 6;
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut world = DaemonWorld::new();
    world.hub_clock = "ntp";
    let mut port = world.with_nonin_9560(&broker.url());
    let clock = HubClockControl::new(&world, "3f1c9a2e-0000-4000-8000-0000000000a1")
        .with_faketime(&world, "-2d");

    // Records of the last hour, stamped by a device clock that is right: two days "ahead" of the hub's.
    let now = device_now();
    let stamps: Vec<NaiveDateTime> = (0..N)
        .map(|i| now - TimeDelta::minutes(10 * (N - i) as i64))
        .collect();
    let dump = |port: &mut SimulatedPort| {
        for (n, stamp) in stamps.iter().enumerate() {
            port.write(&SpotCheck::at(*stamp, n as u16, true).frame());
        }
    };

    // Boot A: the clock is never synchronised; the device dumps its memory.
    let mut daemon = world.start_with_env(&borrow(&clock.env()));
    daemon.wait_opened(&port, LONG);
    let sent_from = Utc::now();
    dump(&mut port);
    assert!(
        wait_until(LONG, || clock.held(&world) == N as u64),
        "the records were not held: {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    let held_seen = Utc::now();
    clock.wait_for_a_trust_check(LONG);
    assert!(subscriber.reading_counts().is_empty());
    let held_now = held_payloads(&world.outbox_path());
    assert_eq!(held_now.len(), N);
    for reading in &held_now {
        assert_eq!(flags(reading), ["smartpoint", "from_memory"], "{reading:#}");
        // The oracle that boot A's wall clock really was two days behind.
        assert_between(
            "held received_at",
            time_field(reading, "received_at"),
            sent_from - TimeDelta::days(2) - TimeDelta::seconds(1),
            held_seen - TimeDelta::days(2) + TimeDelta::seconds(1),
        );
    }
    assert!(
        daemon.terminate().success(),
        "vitalsd exited non-zero on SIGTERM; log:\n{}",
        world.log()
    );

    // Boot B: another boot id, the clock right and synchronised; the device dumps the same records again.
    clock.set_boot_id("3f1c9a2e-0000-4000-8000-0000000000b2");
    clock.set_faketime("+0");
    clock.set_synchronized(true);
    let daemon = world.start_with_env(&borrow(&clock.env()));
    assert!(
        subscriber.wait_for_unique_readings(N, LONG),
        "boot A's readings were not published; status {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    daemon.wait_opened(&port, LONG);
    dump(&mut port);
    assert!(
        wait_until(LONG, || clock.status(&world)["outbox"]["duplicates_total"]
            == N as u64),
        "the re-sent records were not recognised: {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    // And once more: still nothing new.
    dump(&mut port);
    assert!(
        wait_until(LONG, || clock.status(&world)["outbox"]["duplicates_total"]
            == 2 * N as u64),
        "{}",
        clock.status(&world)
    );
    // A new record is the sentinel: a re-sent one published again would have arrived before it.
    let sentinel = device_now();
    port.write(&SpotCheck::at(sentinel, 99, false).frame());
    assert!(
        subscriber.wait_for_unique_readings(N + 1, LONG),
        "no sentinel; log:\n{}",
        world.log()
    );
    let mut readings = subscriber.readings();
    readings.retain(|reading| reading["device_time"] != device_time_text(sentinel).as_str());
    assert_eq!(readings.len(), N, "{readings:#?}");
    let counts = subscriber.reading_counts();
    assert_eq!(counts.len(), N + 1, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    for stamp in &stamps {
        let reading = reading_stamped(&readings, *stamp);
        crate::assert_valid_reading(reading);
        assert_eq!(reading["time_source"], "device", "{reading:#}");
        assert_eq!(
            reading["measured_at"],
            format!("{}+00:00", device_time_text(*stamp)),
            "{reading:#}"
        );
        assert_eq!(reading["hub_clock"], "unsynchronized", "{reading:#}");
        assert_eq!(
            flags(reading),
            ["smartpoint", "from_memory", "hub_clock_unresolved"],
            "{reading:#}"
        );
        // Boot A's clock as it read: two days behind the real time the records were sent.
        assert_between(
            "received_at",
            time_field(reading, "received_at"),
            sent_from - TimeDelta::days(2) - TimeDelta::seconds(1),
            held_seen - TimeDelta::days(2) + TimeDelta::seconds(1),
        );
    }
    // Delivered readings leave the outbox once their acknowledgements are committed.
    let settled = wait_until(LONG, || {
        let status = clock.status(&world);
        status["outbox"]["held_for_clock"] == 0 && status["outbox"]["pending"] == 0
    });
    assert!(settled, "{}", clock.status(&world));
    assert!(
        world.log().contains("hub_clock_unresolved"),
        "no warning about the unresolved readings; log:\n{}",
        world.log()
    );
}

#[test]
fn after_a_reboot_the_earlier_boots_readings_are_published_flagged_while_the_new_boot_still_holds_its_own(
) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut world = DaemonWorld::new();
    world.hub_clock = "ntp";
    let mut port = world.with_nonin_9560(&broker.url());
    let clock = HubClockControl::new(&world, "3f1c9a2e-0000-4000-8000-0000000000c1");
    let now = device_now();
    let earlier = [now - TimeDelta::minutes(20), now - TimeDelta::minutes(10)];

    // Boot A: two readings held; the hub loses power before its clock is synchronised.
    let mut daemon = world.start_with_env(&borrow(&clock.env()));
    daemon.wait_opened(&port, LONG);
    for (n, stamp) in earlier.iter().enumerate() {
        port.write(&SpotCheck::at(*stamp, n as u16, false).frame());
    }
    assert!(
        wait_until(LONG, || clock.held(&world) == 2),
        "{}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    daemon.kill9();

    // Boot B, still unsynchronised: boot A's readings cannot be dated any better, so they go now, flagged.
    clock.set_boot_id("3f1c9a2e-0000-4000-8000-0000000000c2");
    let daemon = world.start_with_env(&borrow(&clock.env()));
    assert!(
        subscriber.wait_for_unique_readings(2, LONG),
        "boot A's readings were not published by boot B; status {}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    let readings = subscriber.readings();
    assert_eq!(readings.len(), 2, "{readings:#?}");
    for stamp in &earlier {
        let reading = reading_stamped(&readings, *stamp);
        crate::assert_valid_reading(reading);
        assert_eq!(reading["time_source"], "device", "{reading:#}");
        assert_eq!(reading["hub_clock"], "unsynchronized", "{reading:#}");
        assert_eq!(
            flags(reading),
            ["smartpoint", "hub_clock_unresolved"],
            "{reading:#}"
        );
    }
    assert_eq!(
        clock.status(&world)["outbox"]["hub_clock"],
        "unsynchronized"
    );

    // Boot B's own reading waits for boot B's clock, and is then dated from it, without the flag.
    daemon.wait_opened(&port, LONG);
    let mine = device_now();
    port.write(&SpotCheck::at(mine, 7, false).frame());
    assert!(
        wait_until(LONG, || clock.held(&world) == 1),
        "{}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    clock.wait_for_a_trust_check(LONG);
    assert_eq!(
        subscriber.readings().len(),
        2,
        "boot B's reading was not held"
    );
    clock.set_synchronized(true);
    assert!(
        subscriber.wait_for_unique_readings(3, LONG),
        "{}\nlog:\n{}",
        clock.status(&world),
        world.log()
    );
    let readings = subscriber.readings();
    let released = reading_stamped(&readings, mine);
    crate::assert_valid_reading(released);
    assert_eq!(released["hub_clock"], "unsynchronized", "{released:#}");
    assert_eq!(flags(released), ["smartpoint"], "{released:#}");
    assert_eq!(readings.len(), 3, "{readings:#?}");
}
