//! What simulated devices do on their own: the burst of stored records after a subscription, the
//! disconnect after it, and the glucose meter's Record Access Control Point procedure.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::Connection;

use super::objects::BluezError;
use super::state::{uuid16, Behaviour, SimState};

/// Measurement characteristics whose stored records a device pushes as soon as the hub subscribes.
const BURST_CHARACTERISTICS: [u16; 5] = [0x2A35, 0x2A9D, 0x2A9C, 0x2A1C, 0x2A5E];

pub fn on_subscribed(
    connection: Connection,
    state: Arc<Mutex<SimState>>,
    address: String,
    uuid: String,
) {
    if !sends_stored_records(&uuid) {
        return;
    }
    // The burst starts without waiting for anything, as A&D cuffs do: the first record may well reach
    // the bus before the hub has the StartNotify reply.
    tokio::spawn(async move { send_stored_records(&connection, &state, &address, &uuid).await });
}

/// Whether a device sends its stored records as soon as indications on this characteristic are enabled.
pub fn sends_stored_records(uuid: &str) -> bool {
    BURST_CHARACTERISTICS
        .iter()
        .any(|short| uuid16(*short) == uuid)
}

/// Sends the stored records of one characteristic, in order; then a device that leaves after its burst
/// drops the link a little later, in the background, so a caller that waits for this is not held up.
pub async fn send_stored_records(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
    uuid: &str,
) {
    let (records, drop_after, behaviour) = {
        let mut state = state.lock().unwrap();
        let device = state.devices.get_mut(address).unwrap();
        (
            device.stored.get(uuid).cloned().unwrap_or_default(),
            device.drop_link_after.take(),
            device.behaviour.clone(),
        )
    };
    for (index, record) in records.iter().enumerate() {
        if drop_after == Some(index) {
            super::drop_link(connection, state, address).await;
            return;
        }
        if !super::notify(connection, state, address, uuid, record).await {
            return;
        }
    }
    {
        let mut state = state.lock().unwrap();
        let device = state.devices.get_mut(address).unwrap();
        if let Some(stored) = device.stored.get_mut(uuid) {
            stored.drain(..records.len().min(stored.len()));
        }
    }
    if matches!(
        behaviour,
        Behaviour::AndCuff | Behaviour::Scale | Behaviour::BodyCompositionScale
    ) {
        let connection = connection.clone();
        let state = state.clone();
        let address = address.to_string();
        tokio::spawn(async move {
            // A burst that BlueZ's own re-subscription started comes before the hub has done anything on
            // the link; the device stays while the hub sets it up (reads, the clock write, up to its own
            // subscription), for a few seconds at most, then hangs up as after any burst.
            let deadline = tokio::time::Instant::now() + HUB_SETUP_WAIT;
            while tokio::time::Instant::now() < deadline {
                let waiting = state.lock().unwrap().devices[&address].awaiting_hub_setup;
                if !waiting {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            super::drop_link(&connection, &state, &address).await;
        });
    }
}

/// How long a device whose burst came on BlueZ's re-subscription waits for the hub's own subscription.
const HUB_SETUP_WAIT: Duration = Duration::from_secs(5);

pub async fn on_write(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
    uuid: &str,
    value: &[u8],
) -> Result<(), BluezError> {
    if uuid != uuid16(0x2A52) {
        return Ok(());
    }
    let racp = uuid16(0x2A52);
    let notifying = state.lock().unwrap().devices[address]
        .notifying
        .contains(&racp);
    if !notifying {
        // GLS 1.0 answers a RACP write without indications enabled with "CCCD improperly configured".
        return Err(BluezError::Failed(
            "Operation failed with ATT error: 0x81".into(),
        ));
    }
    let (records, contexts) = {
        let state = state.lock().unwrap();
        let meter = &state.devices[address];
        (
            meter.glucose_records.clone(),
            meter.glucose_contexts.clone(),
        )
    };
    let (selected, response): (Vec<(u16, Vec<u8>)>, Vec<u8>) = match value {
        [0x01, 0x01] => (records.clone(), vec![0x06, 0x00, 0x01, 0x01]),
        [0x01, 0x03, 0x01, lo, hi] => {
            let first = u16::from_le_bytes([*lo, *hi]);
            (
                records
                    .iter()
                    .filter(|(seq, _)| *seq >= first)
                    .cloned()
                    .collect(),
                vec![0x06, 0x00, 0x01, 0x01],
            )
        }
        [0x01, 0x06] => (
            records.last().cloned().into_iter().collect(),
            vec![0x06, 0x00, 0x01, 0x01],
        ),
        [0x04, 0x01] => {
            let count = records.len() as u16;
            (
                Vec::new(),
                vec![0x05, 0x00, count as u8, (count >> 8) as u8],
            )
        }
        [opcode, ..] => (Vec::new(), vec![0x06, 0x00, *opcode, 0x02]),
        [] => return Err(BluezError::InvalidArguments("empty".into())),
    };
    let response =
        if response[0] == 0x06 && response[3] == 0x01 && selected.is_empty() && value[0] == 0x01 {
            vec![0x06, 0x00, 0x01, 0x06]
        } else {
            response
        };
    let connection = connection.clone();
    let state = state.clone();
    let address = address.to_string();
    let link = state.lock().unwrap().devices[&address].connect_attempts;
    tokio::spawn(async move {
        let measurement = uuid16(0x2A18);
        let context = uuid16(0x2A34);
        for (sequence, record) in &selected {
            if !wait_at_gate(&state, &address, *sequence, link).await {
                return;
            }
            if !super::notify(&connection, &state, &address, &measurement, record).await {
                return;
            }
            if let Some(value) = contexts.get(sequence) {
                super::notify(&connection, &state, &address, &context, value).await;
            }
        }
        super::notify(&connection, &state, &address, &racp, &response).await;
    });
    Ok(())
}

/// Waits while the test holds the meter's transfer before `sequence` (`glucose_gate`); `false` when the
/// link the transfer was asked on went down meanwhile, so a transfer the hub gave up on never spills
/// into a later link.
async fn wait_at_gate(
    state: &Arc<Mutex<SimState>>,
    address: &str,
    sequence: u16,
    link: u32,
) -> bool {
    loop {
        {
            let state = state.lock().unwrap();
            let meter = &state.devices[address];
            if !meter.connected || meter.connect_attempts != link {
                return false;
            }
            if meter.glucose_gate.is_none_or(|gate| sequence < gate) {
                return true;
            }
        }
        // A device's own pace, as the wait for the hub's setup above.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
