//! One Bluetooth session's decisions, sans-IO: what to subscribe to and which clock to set, where each
//! value goes (a decoding channel, the device's dialog, a progress note), what to store, what to write,
//! when the session is over, and what a link that went down means. `ble::session` only moves the bytes.
//!
//! Shaped like the serial dialogs: the session feeds what arrives (`received`) and what the outbox made
//! durable (`handle_stored`), and does what `follow` and `poll(now)` say. Times come in as parameters;
//! which characteristics a dialog uses, and which dialog to build, come from the catalogue's row.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::profile::{self, measurement_protocol};
use crate::catalog::{Decoder, Dialog, GattDialog};
use crate::clock::HubNow;
use crate::decode::current_time::{ClockCharacteristic, ClockFound, ClockSync};
use crate::decode::glucose::dialog::{Action, LastRecord, Noted, RecordDialog};
use crate::decode::{DecodeContext, DecodeEvent, MessageDecoder, Protocol};
use crate::model::reading::{HubTimeZone, Reading};
use crate::outbox::NewRecord;
use crate::pipeline::Decoding;
use crate::state::devices::{BoundDevice, CuffProgress};

/// A device that sends nothing for this long is done with us; the hub lets go of the link.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a characteristic offers, as discovery found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Properties {
    pub read: bool,
    pub write: bool,
    pub notify: bool,
    pub indicate: bool,
}

/// A characteristic the device has, with what it offers.
pub type Found = (Uuid, Properties);

fn properties_of(found: &[Found], wanted: Uuid) -> Option<Properties> {
    found
        .iter()
        .find(|(uuid, _)| *uuid == wanted)
        .map(|(_, properties)| *properties)
}

/// The measurement characteristics the device has, with their protocols, in the order found.
fn measurements(found: &[Found]) -> impl Iterator<Item = (Uuid, Properties, Protocol)> + '_ {
    found.iter().filter_map(|&(uuid, properties)| {
        measurement_protocol(uuid).map(|protocol| (uuid, properties, protocol))
    })
}

/// The device's first measurement characteristic whose protocol holds a dialog, with that dialog. A
/// device speaks one dialog; no catalogued device has two.
fn dialog_of(found: &[Found]) -> Option<(Uuid, GattDialog)> {
    measurements(found)
        .find_map(|(uuid, _, protocol)| protocol.gatt_dialog().map(|dialog| (uuid, dialog)))
}

/// What to subscribe to, in order: every measurement characteristic that notifies or indicates, then the
/// dialog's control point (whenever the device has it, since its answers come only as indications) and
/// its companions that notify. Indications go first, so progress notifications never delay a record.
pub fn subscriptions(found: &[Found]) -> Vec<Uuid> {
    let mut chosen: Vec<Found> = measurements(found)
        .filter(|(_, properties, _)| properties.notify || properties.indicate)
        .map(|(uuid, properties, _)| (uuid, properties))
        .collect();
    if let Some((_, dialog)) = dialog_of(found) {
        let control_point = properties_of(found, dialog.control_point);
        chosen.extend(control_point.map(|properties| (dialog.control_point, properties)));
        for &companion in dialog.companions {
            let properties = properties_of(found, companion).filter(|p| p.notify);
            chosen.extend(properties.map(|properties| (companion, properties)));
        }
    }
    chosen.sort_by_key(|(_, properties)| !properties.indicate);
    chosen.into_iter().map(|(uuid, _)| uuid).collect()
}

/// Which clock characteristic the session reads and sets, as [`ClockSync`] chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockPlan {
    pub sync: ClockSync,
    pub characteristic: Uuid,
    /// Whether to read it before setting it (the coincident time stamp): only a readable one is read.
    pub read: bool,
}

/// Date Time where the device lets the hub write it (A&D), else Current Time (Omron and the Current Time
/// Service); `None` when it has neither.
pub fn clock_plan(found: &[Found]) -> Option<ClockPlan> {
    let date_time = properties_of(found, profile::DATE_TIME).filter(|p| p.write);
    let current_time = properties_of(found, profile::CURRENT_TIME);
    let sync = ClockSync::new(date_time.is_some(), current_time.is_some())?;
    let (characteristic, properties) = match sync.characteristic() {
        ClockCharacteristic::DateTime => (profile::DATE_TIME, date_time),
        ClockCharacteristic::CurrentTime => (profile::CURRENT_TIME, current_time),
    };
    Some(ClockPlan {
        sync,
        characteristic,
        read: properties.is_some_and(|p| p.read),
    })
}

/// What a session learns about its device, for the device list.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceNote {
    Battery(u8),
    /// The device clock was read against the hub's at `at`; the hub has not set it (yet).
    ClockChecked {
        found: ClockFound,
        at: DateTime<Utc>,
    },
    /// The device took the hub's time.
    ClockSet,
    /// A cuff's pressure while it inflates, or `None` when the latest value held none.
    Measuring(Option<CuffProgress>),
}

impl DeviceNote {
    pub fn apply(self, device: &mut BoundDevice) {
        match self {
            DeviceNote::Battery(percent) => device.battery_percent = Some(percent),
            DeviceNote::ClockChecked { found, at } => {
                device.clock_offset_s = match found {
                    ClockFound::Offset(offset) => Some(offset.num_seconds()),
                    ClockFound::NotSet | ClockFound::Unmeasured => None,
                };
                device.clock_not_set = found == ClockFound::NotSet;
                device.clock_checked_at = Some(at);
                device.clock_set = false;
            }
            DeviceNote::ClockSet => device.clock_set = true,
            DeviceNote::Measuring(progress) => device.measuring = progress,
        }
    }
}

/// A Battery Level value: a percentage, which a device past 100 is taken to mean as full.
pub fn battery(value: &[u8]) -> Option<DeviceNote> {
    value
        .first()
        .map(|&percent| DeviceNote::Battery(percent.min(100)))
}

/// Records to make durable (perhaps none), with the counters to commit beside them.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<(Vec<NewRecord>, Reading)>,
    pub counters: Vec<(String, u64)>,
}

/// What to do with a value that arrived.
#[derive(Debug)]
pub enum Received {
    /// Nothing: a value no channel reads (BlueZ signals the value of every read), or a dialog message
    /// that could not be read.
    Nothing,
    /// Something for the device list, and nothing to store.
    Note(DeviceNote),
    /// Store this, then [`SessionCore::follow`] the dialog.
    Store(Batch),
}

/// What the passing of time settled.
#[derive(Debug)]
pub enum Polled {
    /// Nothing came for [`IDLE_TIMEOUT`]: the session ends.
    Idle,
    /// Records whose awaited context did not come: store them, then follow the dialog.
    Store(Batch),
    /// Follow the dialog.
    Follow,
}

/// What the device's dialog asks for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Write {
        characteristic: Uuid,
        value: Vec<u8>,
    },
    /// The dialog is over (answered, or not answered in time): the session ends.
    Finished,
}

/// One decoding channel: a measurement characteristic and its pipeline.
struct Channel {
    characteristic: Uuid,
    decoding: Decoding,
    /// For a progress characteristic, its decoder: its values are shown, never stored.
    progress: Option<Box<dyn MessageDecoder>>,
}

/// The device's dialog and the characteristics its messages use.
struct DialogLink {
    spec: GattDialog,
    /// The measurement characteristic whose records go through the dialog.
    measurement: Uuid,
    /// Whether the device has the control point, so requests can be written.
    control_point: bool,
    records: RecordDialog,
}

/// One session's state: its decoding channels, its dialog, and when the device last sent anything.
pub struct SessionCore {
    address: String,
    channels: Vec<Channel>,
    dialog: Option<DialogLink>,
    last_activity: Instant,
}

impl SessionCore {
    /// A session with the characteristics `found`, once subscribed at `now`: a channel from
    /// `channel_for` for each measurement characteristic, and the dialog of the device's protocol, which
    /// starts from `last` and asks for records only when the device has the dialog's control point.
    pub fn new(
        address: &str,
        found: &[Found],
        mut channel_for: impl FnMut(Protocol) -> Decoding,
        last: LastRecord,
        now: Instant,
    ) -> SessionCore {
        let channels = measurements(found)
            .map(|(characteristic, _, protocol)| Channel {
                characteristic,
                decoding: channel_for(protocol),
                progress: match protocol.spec().decoder {
                    Decoder::Messages(make) if protocol.is_progress() => Some(make()),
                    _ => None,
                },
            })
            .collect();
        let dialog = dialog_of(found).map(|(measurement, spec)| {
            let control_point = properties_of(found, spec.control_point).is_some();
            DialogLink {
                spec,
                measurement,
                control_point,
                records: match spec.dialog {
                    Dialog::GlucoseRecords => RecordDialog::new(last, control_point),
                },
            }
        });
        SessionCore {
            address: address.to_string(),
            channels,
            dialog,
            last_activity: now,
        }
    }

    /// A value from `characteristic`, received at `hub` (and `now` by the monotonic clock).
    pub fn received(
        &mut self,
        characteristic: Uuid,
        value: &[u8],
        hub: &HubNow,
        now: Instant,
    ) -> Received {
        // Anything from the device shows it is still talking, even the value of a read.
        self.last_activity = now;
        let address = &self.address;
        if let Some(dialog) = &mut self.dialog {
            let handled = if characteristic == dialog.spec.control_point {
                Some(dialog.records.handle_racp(value))
            } else if dialog.spec.companions.contains(&characteristic) {
                Some(dialog.records.handle_context(value))
            } else {
                None
            };
            match handled {
                Some(Ok(events)) => {
                    let measurement = dialog.measurement;
                    return match channel(&mut self.channels, measurement) {
                        Some(channel) => Received::Store(batch(&mut channel.decoding, events)),
                        None => Received::Nothing,
                    };
                }
                Some(Err(error)) => {
                    tracing::debug!(%address, %characteristic, %error, "Unreadable dialog message.");
                    return Received::Nothing;
                }
                None => {}
            }
        }
        let Some(channel) = channel(&mut self.channels, characteristic) else {
            return Received::Nothing;
        };
        if let Some(decoder) = &mut channel.progress {
            let time_zone = channel.decoding.settings().time_zone;
            return progress(decoder.as_mut(), value, hub.wall, time_zone)
                .map_or(Received::Nothing, Received::Note);
        }
        let decoded = channel.decoding.decode(value, hub);
        let events = match &mut self.dialog {
            Some(dialog) if dialog.measurement == characteristic => {
                dialog.records.handle_measurement(decoded)
            }
            _ => decoded,
        };
        Received::Store(batch(&mut channel.decoding, events))
    }

    /// Readings the outbox made durable, and whether it took all of them: what the dialog notes from
    /// them (the newest record, from which the next session asks for records).
    pub fn handle_stored(&mut self, readings: &[Reading], all_taken: bool) -> Noted {
        self.dialog.as_mut().map_or_else(Noted::default, |dialog| {
            dialog.records.handle_stored(readings, all_taken)
        })
    }

    /// What the dialog asks for now; call it after storing what `received` or `poll` gave.
    pub fn follow(&mut self, now: Instant) -> Option<Step> {
        let dialog = self.dialog.as_mut()?;
        match dialog.records.poll(now)? {
            Action::Write(value) => dialog.control_point.then_some(Step::Write {
                characteristic: dialog.spec.control_point,
                value,
            }),
            Action::Finished => Some(Step::Finished),
        }
    }

    /// What the passing of time settled: a device quiet for too long, or a record whose context did not
    /// come while the dialog's answer waited for late records (stored before the answer is judged).
    pub fn poll(&mut self, now: Instant) -> Polled {
        if now.saturating_duration_since(self.last_activity) >= IDLE_TIMEOUT {
            return Polled::Idle;
        }
        let Some(dialog) = &mut self.dialog else {
            return Polled::Follow;
        };
        let overdue = dialog.records.release_overdue(now);
        match channel(&mut self.channels, dialog.measurement) {
            Some(channel) if !overdue.is_empty() => {
                Polled::Store(batch(&mut channel.decoding, overdue))
            }
            _ => Polled::Follow,
        }
    }

    /// The session ends: what each channel still holds (a record still waiting for its context is
    /// stored as it is), each channel closed so that a frame left unfinished is counted. The counters
    /// closing gathered go out with the decodings' next flush.
    pub fn finish(&mut self) -> Vec<Batch> {
        let mut held = self
            .dialog
            .as_mut()
            .map(|dialog| (dialog.measurement, dialog.records.finish()));
        self.channels
            .iter_mut()
            .map(|channel| {
                let events = match held.take_if(|(uuid, _)| *uuid == channel.characteristic) {
                    Some((_, events)) => events,
                    None => Vec::new(),
                };
                let batch = batch(&mut channel.decoding, events);
                channel.decoding.closed();
                batch
            })
            .collect()
    }

    /// The decoding channels, for the periodic counter flush.
    pub fn decodings(&mut self) -> impl Iterator<Item = &mut Decoding> {
        self.channels
            .iter_mut()
            .map(|channel| &mut channel.decoding)
    }
}

fn channel(channels: &mut [Channel], characteristic: Uuid) -> Option<&mut Channel> {
    channels
        .iter_mut()
        .find(|channel| channel.characteristic == characteristic)
}

fn batch(decoding: &mut Decoding, events: Vec<DecodeEvent>) -> Batch {
    Batch {
        records: decoding.records(events),
        counters: decoding.take_counter_deltas(),
    }
}

/// A progress value as the device list shows it: the first value of the first reading, kept with the
/// time it came. Progress is never judged against a device clock, so the context takes the hub's time as
/// trusted.
fn progress(
    decoder: &mut dyn MessageDecoder,
    value: &[u8],
    received_at: DateTime<Utc>,
    time_zone: &dyn HubTimeZone,
) -> Option<DeviceNote> {
    let context = DecodeContext::trusted(received_at, time_zone);
    let readings = decoder.decode(value, &context).ok()?;
    let value = readings.first()?.values.first()?;
    Some(DeviceNote::Measuring(value.value.map(|pressure| {
        CuffProgress {
            pressure,
            unit: value.measure.unit,
            at: received_at,
        }
    })))
}

/// How long a link can have been up when a device's refusal of the bond's key ends it. The kernel asks
/// for encryption as soon as the link is up and drops the link within a few connection events when the
/// device has no key (77 ms in the real-BlueZ VM, under emulation); a link that stood longer was ended by
/// something else, which says nothing about the bond.
pub const REFUSED_KEY_LINK_LIFETIME: Duration = Duration::from_secs(2);

/// Watches a link while it is being set up. With a device that forgot its bond, BlueZ 5.66 can bring
/// the link up and answer `Connect`, and the kernel then drops the link when encryption fails; waiting for
/// the services to be resolved would end only at the connect timeout.
#[derive(Debug, Default)]
pub struct LinkWatch {
    up_since: Option<Instant>,
}

/// How a link that came up went down again while it was being set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDown {
    /// Within [`REFUSED_KEY_LINK_LIFETIME`] of coming up: an aborted link, as a lost bond's is.
    Aborted,
    /// After standing this long: dropped for another reason (the real-BlueZ suite saw links stand 4 s
    /// without their services being resolved, three times in a row, just after bluetoothd restarted).
    Dropped(Duration),
}

impl LinkWatch {
    /// Whether the link is up at `now`; when it was up and went down, how it went down.
    pub fn checked(&mut self, up: bool, now: Instant) -> Option<LinkDown> {
        match (self.up_since, up) {
            (None, true) => {
                self.up_since = Some(now);
                None
            }
            (Some(since), false) => {
                let stood = now.saturating_duration_since(since);
                Some(if stood < REFUSED_KEY_LINK_LIFETIME {
                    LinkDown::Aborted
                } else {
                    LinkDown::Dropped(stood)
                })
            }
            _ => None,
        }
    }
}

/// What to do about a link, checked once a second while the session runs.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkCheck<E> {
    /// The session goes on, still holding the subscription's failure, if there was one.
    CarryOn(Option<E>),
    /// The device is gone and everything it sent was read.
    Finished,
    /// The subscription failed and nothing was stored: the session fails with that error.
    Failed(E),
}

/// A link is gone when a subscription failed or the device is no longer connected. What the device sent
/// before it went reached the bus ahead of the answer that says so and waits in the stream (`queued`): a
/// busy hub reads it before ending, or loses the end of a burst the device has already deleted. Then a
/// failed subscription is an error only when nothing was stored: a device that sent its records on
/// BlueZ's own re-subscription and dropped the link fails our subscription, but its session worked.
pub fn link_check<E>(
    subscription_failed: Option<E>,
    connected: bool,
    queued: bool,
    readings: usize,
) -> LinkCheck<E> {
    let gone = subscription_failed.is_some() || !connected;
    match subscription_failed {
        failed if !gone || queued => LinkCheck::CarryOn(failed),
        Some(error) if readings == 0 => LinkCheck::Failed(error),
        _ => LinkCheck::Finished,
    }
}

/// How a connection attempt's link went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Up, with the services resolved.
    Up,
    /// Up, and down again before the services were resolved.
    WentDown,
}

/// How reading the device ended, as far as the link matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collected {
    Finished { readings: usize },
    Shutdown,
    OutboxGone,
    Failed,
}

/// What a session's result is, given its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Let go of the link (when still up) and report what reading the device ended with.
    Disconnect,
    /// Report what reading the device ended with; the link is gone already.
    AsCollected,
    /// The device dropped the link before its services were resolved, but what it had sent was read:
    /// report that (and say so), so the records it now holds delivered are not lost.
    ReadBeforeDrop,
    /// The session fails as the aborted link it was.
    Aborted,
}

/// A bonded device sends what it holds as soon as BlueZ re-enables its subscription and may drop the
/// link before BlueZ has resolved its services; what it sent waits in the stream, so the session reads
/// it after such a link too. Reading something makes the session a success; with nothing read (a lost
/// bond's link) it fails as the aborted link it was, unless the daemon is stopping or the outbox is gone.
pub fn outcome(setup: Setup, collected: Collected) -> Outcome {
    match (setup, collected) {
        (Setup::Up, _) => Outcome::Disconnect,
        (Setup::WentDown, Collected::Finished { readings }) if readings > 0 => {
            Outcome::ReadBeforeDrop
        }
        (Setup::WentDown, Collected::Shutdown | Collected::OutboxGone) => Outcome::AsCollected,
        (Setup::WentDown, _) => Outcome::Aborted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::glucose::sequence_number;
    use crate::decode::test_support::{bytes_of, render_value};
    use crate::model::measurement_time::HubClock;
    use crate::model::reading::BootInstant;
    use crate::state::devices::DeviceStrings;

    const ADDRESS: &str = "AA:BB:CC:DD:EE:01";

    /// `"2a18 n, 2a52 i"`: characteristics by their SIG number, with what they offer (`r`ead, `w`rite,
    /// `n`otify, `i`ndicate).
    fn device(text: &str) -> Vec<Found> {
        text.split(", ")
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (number, offered) = entry.split_once(' ').unwrap_or((entry, ""));
                let properties = Properties {
                    read: offered.contains('r'),
                    write: offered.contains('w'),
                    notify: offered.contains('n'),
                    indicate: offered.contains('i'),
                };
                (uuid(number), properties)
            })
            .collect()
    }

    fn uuid(number: &str) -> Uuid {
        profile::sig(u16::from_str_radix(number, 16).unwrap())
    }

    fn number(uuid: Uuid) -> String {
        format!("{:04x}", uuid.as_fields().0)
    }

    #[track_caller]
    fn check_subscriptions(present: &str, expected: &str) {
        let chosen: Vec<String> = subscriptions(&device(present))
            .into_iter()
            .map(number)
            .collect();
        assert_eq!(chosen.join(" "), expected, "{present}");
    }

    #[rustfmt::skip]
    #[test]
    fn measurements_and_a_dialogs_characteristics_are_subscribed_indications_first() {
        // The battery and the clock are read, never subscribed; the cuff's progress comes after records.
        check_subscriptions("2a36 n, 2a35 i, 2a19 rn, 2a08 rw", "2a35 2a36");
        // A measurement that neither notifies nor indicates has nothing to subscribe to.
        check_subscriptions("2a18 r", "");
        // The control point is subscribed whenever it is there; the context only when it notifies.
        check_subscriptions("2a18 n, 2a34 n, 2a52 i", "2a52 2a18 2a34");
        check_subscriptions("2a18 n, 2a34 i, 2a52 w", "2a18 2a52");
        check_subscriptions("2a18 n", "2a18");
        // Without the measurement whose protocol holds the dialog, its characteristics mean nothing.
        check_subscriptions("2a34 n, 2a52 i, 2a35 i", "2a35");
        check_subscriptions("", "");
    }

    #[track_caller]
    fn check_clock(present: &str, expected: &str) {
        let plan = match clock_plan(&device(present)) {
            Some(plan) if plan.read => format!("{} read", number(plan.characteristic)),
            Some(plan) => number(plan.characteristic),
            None => "none".to_string(),
        };
        assert_eq!(plan, expected, "{present}");
    }

    #[rustfmt::skip]
    #[test]
    fn the_clock_set_is_a_writable_date_time_else_the_current_time() {
        check_clock("2a08 rw, 2a2b rw", "2a08 read");
        check_clock("2a08 r, 2a2b rw", "2a2b read");
        check_clock("2a08 w", "2a08");
        check_clock("2a2b n", "2a2b");
        check_clock("2a08 r", "none");
        check_clock("2a35 i", "none");
    }

    #[track_caller]
    fn check_battery(hex: &str, expected: Option<u8>) {
        assert_eq!(
            battery(&bytes_of(hex)),
            expected.map(DeviceNote::Battery),
            "{hex}"
        );
    }

    #[rustfmt::skip]
    #[test]
    fn battery_levels_past_full_are_full() {
        check_battery("2A", Some(42));
        check_battery("64", Some(100));
        check_battery("65", Some(100));
        check_battery("FF", Some(100));
        check_battery("50 00", Some(80));
        check_battery("", None);
    }

    fn hub_at(seconds: u64) -> HubNow {
        HubNow {
            // A day after every record's time stamp in any time zone, so no time flag depends on the
            // machine's.
            wall: "2024-03-16T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
                + chrono::TimeDelta::seconds(seconds as i64),
            boot: BootInstant {
                boot_id: "test-boot".into(),
                since_boot: Duration::from_secs(100 + seconds),
            },
            clock: HubClock::Trusted,
        }
    }

    fn render_batch(batch: Batch, out: &mut Vec<String>) -> Vec<Reading> {
        let mut readings = Vec::new();
        for (_, reading) in batch.records {
            let sequence = match reading.kind {
                crate::model::reading::Kind::BloodGlucose => sequence_number(&reading.raw)
                    .map(|sequence| format!(" #{sequence}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let values: Vec<String> = reading.values.iter().map(render_value).collect();
            out.push(format!(
                "record {}{sequence} {} [{}]",
                reading.kind.as_str(),
                values.join(" "),
                crate::model::reading::joined(&reading.flags),
            ));
            readings.push(reading);
        }
        let counters: Vec<String> = batch
            .counters
            .iter()
            .filter(|(name, _)| !name.contains('.') && name != "readings")
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if !counters.is_empty() {
            out.push(format!("counters {}", counters.join(" ")));
        }
        readings
    }

    /// Stores a batch as the session does (the outbox takes everything unless `refused`) and renders it
    /// with what the dialog noted.
    fn store(core: &mut SessionCore, batch: Batch, refused: bool, out: &mut Vec<String>) {
        let readings = render_batch(batch, out);
        let noted = core.handle_stored(&readings, !refused);
        if let Some(last) = noted.last {
            out.push(format!("noted {}", last.sequence.unwrap()));
        }
        if noted.restart_found {
            out.push("restart".to_string());
        }
    }

    fn follow(core: &mut SessionCore, now: Instant, out: &mut Vec<String>) {
        match core.follow(now) {
            Some(Step::Write {
                characteristic,
                value,
            }) => out.push(format!(
                "write {} {}",
                number(characteristic),
                hex::encode(value)
            )),
            Some(Step::Finished) => out.push("finished".to_string()),
            None => {}
        }
    }

    /// Runs a session with a device that has the characteristics `present` (as in [`device`]) and whose
    /// newest glucose record the hub noted earlier is `last`. Each step is `(seconds, input, expected)`;
    /// inputs: `start` (the dialog followed once, before the loop), `XXXX HEX` (a value from
    /// characteristic 0xXXXX, or `refused XXXX HEX` when the outbox does not take all it gives), `poll`
    /// (the session's once-a-second tick) and `end`. As in the session, what is to be stored is stored at
    /// once, and the dialog is followed after anything stored and after every tick. Outputs: `record KIND
    /// [#SEQ] VALUES [FLAGS]`, `counters`, `noted SEQ`, `restart`, `measuring PRESSURE`, `write XXXX HEX`,
    /// `finished`, `idle`.
    #[track_caller]
    fn check(present: &str, last: Option<u16>, script: &[(u64, &str, &str)]) {
        let start = Instant::now();
        let last = LastRecord {
            sequence: last,
            key: None,
        };
        let channel_for = |protocol| {
            super::super::decoding_for(
                ADDRESS,
                protocol,
                &DeviceStrings::default(),
                "hub-1",
                &Default::default(),
                Default::default(),
            )
        };
        let mut core = SessionCore::new(ADDRESS, &device(present), channel_for, last, start);
        for &(seconds, input, expected) in script {
            let now = start + Duration::from_secs(seconds);
            let mut out = Vec::new();
            let (refused, input) = match input.strip_prefix("refused ") {
                Some(rest) => (true, rest),
                None => (false, input),
            };
            match input {
                "start" => follow(&mut core, now, &mut out),
                "poll" => match core.poll(now) {
                    Polled::Idle => out.push("idle".to_string()),
                    Polled::Store(batch) => {
                        store(&mut core, batch, refused, &mut out);
                        follow(&mut core, now, &mut out);
                    }
                    Polled::Follow => follow(&mut core, now, &mut out),
                },
                "end" => {
                    for batch in core.finish() {
                        store(&mut core, batch, refused, &mut out);
                    }
                }
                value => {
                    let (number, hex) = value.split_once(' ').unwrap_or((value, ""));
                    let received =
                        core.received(uuid(number), &bytes_of(hex), &hub_at(seconds), now);
                    match received {
                        Received::Nothing => {}
                        Received::Note(DeviceNote::Measuring(Some(progress))) => out.push(format!(
                            "measuring {}[{}]",
                            progress.pressure, progress.unit
                        )),
                        Received::Note(DeviceNote::Measuring(None)) => {
                            out.push("measuring none".to_string())
                        }
                        Received::Note(other) => out.push(format!("{other:?}")),
                        Received::Store(batch) => {
                            store(&mut core, batch, refused, &mut out);
                            follow(&mut core, now, &mut out);
                        }
                    }
                }
            }
            assert_eq!(out.join("; "), expected, "at {seconds} s, {input}");
        }
    }

    const CUFF: &str = "2a35 i, 2a36 n, 2a19 rn";
    const METER: &str = "2a18 n, 2a34 n, 2a52 i";
    /// Record 1, 2024-03-15 07:00, 95 mg/dL.
    const ONE: &str = "2a18 02 01 00 E8 07 03 0F 07 00 00 5F B0 11";
    /// Record 2, 2024-03-15 08:00, 95 mg/dL.
    const TWO: &str = "2a18 02 02 00 E8 07 03 0F 08 00 00 5F B0 11";
    /// Record 3, 2024-03-15 09:00, 95 mg/dL, announcing a context.
    const THREE_WITH_CONTEXT: &str = "2a18 12 03 00 E8 07 03 0F 09 00 00 5F B0 11";
    /// Record 3's context: preprandial, by the patient, no health issues.
    const CONTEXT_THREE: &str = "2a34 06 03 00 01 51";
    const GLUCOSE: &str = "blood_glucose";
    /// How every record above reads: its concentration, sample and where it was taken.
    const RECORD_FLAGS: &str = "glucose=95[mg/dL] [sample_capillary_whole_blood,location_finger]";

    #[rustfmt::skip]
    #[test]
    fn a_cuffs_progress_is_noted_its_records_stored_and_a_quiet_device_let_go() {
        check(CUFF, None, &[
            (0, "start", ""),
            (1, "2a36 00 96 00 FF 07 FF 07", "measuring 150[mm[Hg]]"),
            (1, "2a36 00 FF 07 FF 07 FF 07", "measuring none"),
            (1, "2a36 00 96", ""),
            (2, "2a35 00 80 00 50 00 5F 00", "record blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] []"),
            (2, "2a35 00 80", "counters frames_rejected=1"),
            // The value of a read (BlueZ signals it) goes nowhere, but shows the device is still there.
            (3, "2a19 64", ""),
            (62, "poll", ""),
            (63, "poll", "idle"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_meters_records_are_asked_for_joined_to_their_context_and_noted() {
        check(METER, None, &[
            (0, "start", "write 2a52 0101"),
            (1, ONE, &format!("record {GLUCOSE} #1 {RECORD_FLAGS}; noted 1")),
            // The record waits for the context it announced.
            (1, THREE_WITH_CONTEXT, ""),
            (1, CONTEXT_THREE, &format!("record {GLUCOSE} #3 glucose=95[mg/dL] [sample_capillary_whole_blood,location_finger,context_follows,meal_preprandial,tester_self,health_none]; noted 3")),
            (2, "2a52 06 00 01 01", ""),
            (3, "poll", ""),
            (4, "poll", "finished"),
        ]);
        // Later sessions ask for what came after the newest record noted; a refused record is not noted.
        check(METER, Some(1), &[
            (0, "start", "write 2a52 0103010200"),
            (1, &format!("refused {TWO}"), &format!("record {GLUCOSE} #2 {RECORD_FLAGS}")),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_record_whose_context_does_not_come_is_stored_as_it_is() {
        // Before the answer is judged, once it waited for late records in vain.
        check(METER, None, &[
            (0, "start", "write 2a52 0101"),
            (1, THREE_WITH_CONTEXT, ""),
            (2, "2a52 06 00 01 01", ""),
            (3, "poll", ""),
            (4, "poll", &format!("record {GLUCOSE} #3 glucose=95[mg/dL] [sample_capillary_whole_blood,location_finger,context_follows]; noted 3; finished")),
        ]);
        // When the session ends.
        check(METER, None, &[
            (0, "start", "write 2a52 0101"),
            (1, THREE_WITH_CONTEXT, ""),
            (2, "end", &format!("record {GLUCOSE} #3 glucose=95[mg/dL] [sample_capillary_whole_blood,location_finger,context_follows]; noted 3")),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn unreadable_dialog_messages_and_malformed_records_change_nothing() {
        check(METER, None, &[
            (0, "start", "write 2a52 0101"),
            (1, "2a52 06", ""),
            (1, "2a34 06 03", ""),
            (1, "2a18 02 05", "counters frames_rejected=1"),
            (2, "2a52 06 00 01 01", ""),
            (4, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_meter_without_a_control_point_is_asked_nothing_but_its_contexts_still_join() {
        check("2a18 n, 2a34 n", None, &[
            (0, "start", ""),
            (1, THREE_WITH_CONTEXT, ""),
            (1, CONTEXT_THREE, &format!("record {GLUCOSE} #3 glucose=95[mg/dL] [sample_capillary_whole_blood,location_finger,context_follows,meal_preprandial,tester_self,health_none]; noted 3")),
            (2, "poll", ""),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_dialogs_characteristics_mean_nothing_on_a_device_without_its_measurement() {
        check("2a35 i, 2a34 n, 2a52 i", None, &[
            (0, "start", ""),
            (1, "2a52 06 00 01 01", ""),
            (1, "2a34 06 03 00 01 51", ""),
            (4, "poll", ""),
            (5, "end", ""),
        ]);
    }

    /// `links`: the link's state at each check, `u` up or `d` down, with the milliseconds since the
    /// attempt started (`u0 d50`); `expected`: where the attempt ends, `A` as an aborted link, `D` as a
    /// link dropped for another reason, `.` not yet.
    #[track_caller]
    fn check_watch(links: &str, expected: &str) {
        let start = Instant::now();
        let mut watch = LinkWatch::default();
        let verdicts: String = links
            .split(' ')
            .map(|check| {
                let at = start + Duration::from_millis(check[1..].parse().unwrap());
                match watch.checked(check.starts_with('u'), at) {
                    None => '.',
                    Some(LinkDown::Aborted) => 'A',
                    Some(LinkDown::Dropped(_)) => 'D',
                }
            })
            .collect();
        assert_eq!(verdicts, expected, "{links}");
    }

    #[test]
    fn a_link_that_came_up_and_went_down_while_connecting_is_aborted_unless_it_stood_a_while() {
        check_watch("d0 d250 d500", "...");
        check_watch("d0 u250 d500", "..A");
        check_watch("u0 u250 u500 d750", "...A");
        check_watch("u0 u250 u500", "...");
        check_watch("u0 d77", ".A");
        check_watch("u0 d1999", ".A");
        check_watch("u0 d2000", ".D");
        check_watch("d0 u250 u2500 d4350", "...D");
    }

    #[track_caller]
    fn check_link(
        failed: Option<&str>,
        connected: bool,
        queued: bool,
        readings: usize,
        expected: &str,
    ) {
        let verdict = match link_check(failed, connected, queued, readings) {
            LinkCheck::CarryOn(None) => "carry on".to_string(),
            LinkCheck::CarryOn(Some(error)) => format!("carry on, holding {error}"),
            LinkCheck::Finished => "finished".to_string(),
            LinkCheck::Failed(error) => format!("failed: {error}"),
        };
        assert_eq!(
            verdict, expected,
            "{failed:?} {connected} {queued} {readings}"
        );
    }

    #[rustfmt::skip]
    #[test]
    fn a_gone_link_ends_the_session_once_what_it_sent_was_read() {
        check_link(None, true, false, 0, "carry on");
        check_link(None, false, true, 0, "carry on");
        check_link(None, false, false, 0, "finished");
        check_link(None, false, false, 3, "finished");
        // A failed subscription is an error only when nothing was stored.
        check_link(Some("refused"), false, true, 0, "carry on, holding refused");
        check_link(Some("refused"), false, false, 0, "failed: refused");
        check_link(Some("refused"), false, false, 2, "finished");
    }

    #[track_caller]
    fn check_outcome(setup: Setup, collected: Collected, expected: Outcome) {
        assert_eq!(
            outcome(setup, collected),
            expected,
            "{setup:?} {collected:?}"
        );
    }

    #[rustfmt::skip]
    #[test]
    fn a_session_that_read_something_survives_a_link_dropped_while_connecting() {
        use Collected::{Failed, OutboxGone, Shutdown};
        use Setup::{Up, WentDown};
        check_outcome(Up, Collected::Finished { readings: 0 }, Outcome::Disconnect);
        check_outcome(Up, Failed, Outcome::Disconnect);
        check_outcome(WentDown, Collected::Finished { readings: 2 }, Outcome::ReadBeforeDrop);
        check_outcome(WentDown, Collected::Finished { readings: 0 }, Outcome::Aborted);
        check_outcome(WentDown, Failed, Outcome::Aborted);
        check_outcome(WentDown, Shutdown, Outcome::AsCollected);
        check_outcome(WentDown, OutboxGone, Outcome::AsCollected);
    }
}
