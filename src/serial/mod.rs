//! The serial transport: opens a port by path, reads bytes, and reopens it when the device comes back.
//!
//! It does I/O and nothing else: bytes go out as [`PortEvent::Bytes`] with the time they were read, and
//! decoding happens downstream (`device` drives the pipeline); commands for the device come in on a channel
//! from that task, whose decoder holds the protocol's dialog, and are written as they come. A vanished device (EOF or a read
//! error, as a USB unplug gives) closes the port cleanly; the task then polls the configured path (usually
//! a `/dev/serial/by-id/` link, which disappears while the device is unplugged) and reopens it when it is
//! back.

pub mod device;
pub mod ports;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

/// How often a missing port is looked for.
const REOPEN_POLL: Duration = Duration::from_secs(1);

/// What happened on a port.
#[derive(Debug)]
pub enum PortEvent {
    /// The port opened; `connection` numbers the openings, so commands meant for an earlier one can be
    /// told apart.
    Opened {
        connection: u64,
        /// What the port's USB descriptor says the device is (nothing for a generic cable).
        identity: crate::model::payload::DeviceIdentity,
    },
    Bytes {
        bytes: Vec<u8>,
        received: crate::clock::HubNow,
    },
    Closed {
        reason: String,
    },
}

/// Bytes for the device, for one connection: a command made for a connection that ended is not sent on
/// the next.
#[derive(Debug)]
pub struct DeviceCommand {
    pub connection: u64,
    pub bytes: Vec<u8>,
}

/// Where and how to open a port, and what to send the device.
#[derive(Debug, Clone)]
pub struct PortSettings {
    pub location: ports::PortLocation,
    pub baud_rate: u32,
    pub parity: crate::decode::Parity,
    pub commands: crate::decode::HostCommands,
}

/// Runs until `shutdown` turns true or the receiver of `events` is gone. Commands that arrive while the
/// port is closed were meant for the connection that ended and are dropped.
pub async fn run_port(
    settings: PortSettings,
    events: mpsc::Sender<PortEvent>,
    mut commands: mpsc::Receiver<DeviceCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported_missing = false;
    let mut connection = 0u64;
    let roots = ports::Roots::from_environment();
    let wanted = settings.location.describe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A port matched by USB identity is looked up afresh each time: a new cable or socket moves it.
        let path = settings.location.resolve(&roots);
        match open(path.as_deref(), &settings) {
            Ok(mut port) => {
                reported_missing = false;
                let path = path.unwrap_or_default();
                tracing::info!(port = %wanted, path = %path.display(), "Serial port opened.");
                connection += 1;
                let identity = ports::find(&roots, &path)
                    .map(|port| port.device_identity())
                    .unwrap_or_default();
                if events
                    .send(PortEvent::Opened {
                        connection,
                        identity,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let reason = read_until_gone(
                    &mut port,
                    connection,
                    &events,
                    &mut commands,
                    &mut shutdown,
                    &settings,
                    &path,
                )
                .await;
                let Some(reason) = reason else { return };
                tracing::warn!(port = %wanted, %reason, "Serial device gone; waiting for it to return.");
                if events.send(PortEvent::Closed { reason }).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                if !reported_missing {
                    tracing::warn!(port = %wanted, %error, "Cannot open serial port; will keep trying.");
                    reported_missing = true;
                } else {
                    tracing::debug!(port = %wanted, %error, "Serial port still unavailable.");
                }
            }
        }
        let reopen = tokio::time::sleep(REOPEN_POLL);
        tokio::pin!(reopen);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = &mut reopen => break,
                Some(command) = commands.recv() => {
                    tracing::debug!(port = %wanted, bytes = command.bytes.len(), "Dropped a command for a closed port.");
                }
            }
        }
    }
}

/// The serial library's parity for a protocol's (tokio-serial re-exports serialport's type).
pub fn line_parity(parity: crate::decode::Parity) -> serialport::Parity {
    match parity {
        crate::decode::Parity::None => serialport::Parity::None,
        crate::decode::Parity::Odd => serialport::Parity::Odd,
        crate::decode::Parity::Even => serialport::Parity::Even,
    }
}

fn open(
    path: Option<&std::path::Path>,
    settings: &PortSettings,
) -> Result<SerialStream, tokio_serial::Error> {
    let Some(path) = path.filter(|path| path.exists()) else {
        return Err(tokio_serial::Error::new(
            tokio_serial::ErrorKind::NoDevice,
            "no such device",
        ));
    };
    let path = path.to_string_lossy();
    let mut port = tokio_serial::new(path.as_ref(), settings.baud_rate)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(line_parity(settings.parity))
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()?;
    // Some USB-serial cables power the device from DTR/RTS; pseudo-terminals have no modem lines (ENOTTY).
    if let Err(error) = port.write_data_terminal_ready(true) {
        tracing::debug!(%error, "Cannot raise DTR; continuing without modem lines.");
    }
    if let Err(error) = port.write_request_to_send(true) {
        tracing::debug!(%error, "Cannot raise RTS; continuing without modem lines.");
    }
    Ok(port)
}

/// Sends a command to the device; a failed write is logged, since the read side notices a device that
/// left. Gives up when the daemon stops: a device that takes no more bytes (a USB or Bluetooth serial link
/// that stalled) must not hold the stop up. Returns whether the daemon goes on.
async fn send(
    port: &mut SerialStream,
    path: &std::path::Path,
    command: &[u8],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        written = port.write_all(command) => {
            if let Err(error) = written {
                tracing::debug!(path = %path.display(), %error, "Writing to the device failed.");
            }
            true
        }
        _ = shutdown.changed() => false,
    }
}

/// Reads until the device goes away; returns why, or `None` when the receiver is gone or the daemon stops.
/// Meanwhile it sends the opening commands once, and every command the pipeline passes on.
///
/// Bytes it has read are always handed over, also when the stop comes while it waits for the pipeline to
/// take them (behind a full disk): the device sent them once, and the pipeline, which keeps taking bytes
/// until this task ends, either stores their readings or counts them as dropped.
async fn read_until_gone(
    port: &mut SerialStream,
    connection: u64,
    events: &mpsc::Sender<PortEvent>,
    commands: &mut mpsc::Receiver<DeviceCommand>,
    shutdown: &mut watch::Receiver<bool>,
    settings: &PortSettings,
    path: &std::path::Path,
) -> Option<String> {
    for command in &settings.commands.on_open {
        if *shutdown.borrow_and_update() || !send(port, path, command, shutdown).await {
            return None;
        }
    }
    let mut buffer = vec![0u8; 4096];
    let mut commands_open = true;
    loop {
        if *shutdown.borrow_and_update() {
            return None;
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            read = port.read(&mut buffer) => match read {
                Ok(0) => return Some("end of file".to_string()),
                Ok(count) => {
                    let event = PortEvent::Bytes {
                        bytes: buffer[..count].to_vec(),
                        received: crate::clock::hub_now(),
                    };
                    if events.send(event).await.is_err() {
                        return None;
                    }
                }
                Err(error) => return Some(error.to_string()),
            },
            command = commands.recv(), if commands_open => match command {
                Some(command) if command.connection == connection => {
                    if !send(port, path, &command.bytes, shutdown).await {
                        return None;
                    }
                }
                Some(_) => tracing::debug!(path = %path.display(), "Dropped a command meant for an earlier connection."),
                None => commands_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd};

    use nix::fcntl::OFlag;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

    use super::*;

    /// A pseudo-terminal: its master end (the device's side) and the settings that open its slave end.
    fn line() -> (std::fs::File, std::path::PathBuf, PortSettings) {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let tty = std::path::PathBuf::from(ptsname_r(&master).unwrap());
        let settings = PortSettings {
            location: ports::PortLocation::Path(tty.clone()),
            baud_rate: 9600,
            parity: crate::decode::Parity::None,
            commands: Default::default(),
        };
        let master = std::fs::File::from(std::os::fd::OwnedFd::from(master));
        (master, tty, settings)
    }

    /// The transport running on `settings` with room for `room` events, once it opened the port: its
    /// events, the sender of its commands, its stop and its task.
    async fn opened(
        settings: PortSettings,
        room: usize,
    ) -> (
        mpsc::Receiver<PortEvent>,
        mpsc::Sender<DeviceCommand>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (events_tx, mut events) = mpsc::channel(room);
        let (commands_tx, commands) = mpsc::channel(room);
        let (stop, stop_signal) = watch::channel(false);
        let transport = tokio::spawn(run_port(settings, events_tx, commands, stop_signal));
        assert!(matches!(
            events.recv().await,
            Some(PortEvent::Opened { .. })
        ));
        (events, commands_tx, stop, transport)
    }

    /// Bytes the transport has read reach the pipeline even when the stop comes while the pipeline is not
    /// taking them: a full disk holds the pipeline up, and the device sent those bytes once. What the
    /// transport did not read stays on the line, for the next start to read.
    #[tokio::test]
    async fn bytes_read_before_the_stop_are_handed_over_even_while_the_pipeline_waits() {
        let (mut master, tty, settings) = line();
        // Held open so that the line and what is unread on it outlive the transport, and to read that.
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tty)
            .unwrap();
        // Room for one event: once the first bytes wait in it, the pipeline is held up.
        let (mut events, _commands_tx, stop, transport) = opened(settings, 1).await;
        let unread = || {
            let mut count: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer, which points at `count`.
            let result = unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut count) };
            assert_eq!(result, 0, "FIONREAD on the pty");
            count
        };
        master.write_all(b"first ").unwrap();
        while events.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Read by the transport, which then waits for room in the pipeline: the line looks empty a while.
        master.write_all(b"second").unwrap();
        let mut empty_for = 0;
        while empty_for < 3 {
            empty_for = if unread() == 0 { empty_for + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        let mut handed_over = Vec::new();
        while let Some(event) = events.recv().await {
            if let PortEvent::Bytes { bytes, .. } = event {
                handed_over.extend(bytes);
            }
        }
        transport.await.unwrap();
        let mut on_the_line: Vec<u8> = Vec::new();
        while handed_over.len() + on_the_line.len() < b"first second".len() {
            let mut fds = [PollFd::new(slave.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(5000u16)) != Ok(1) {
                break;
            }
            let mut buffer = [0u8; 64];
            let count = slave.read(&mut buffer).unwrap();
            on_the_line.extend(&buffer[..count]);
        }
        handed_over.extend(on_the_line);
        assert_eq!(String::from_utf8_lossy(&handed_over), "first second");
    }

    /// A device that takes no more bytes (nobody reads the line's other end) does not hold up the stop of
    /// a transport that is writing to it.
    #[tokio::test]
    async fn a_stop_ends_a_write_the_device_does_not_take() {
        let (master, _, settings) = line();
        let (_events, commands_tx, stop, transport) = opened(settings, 8).await;
        // More than the line holds: the write blocks once it is full.
        for _ in 0..4 {
            let command = DeviceCommand {
                connection: 1,
                bytes: vec![0x55; 64 * 1024],
            };
            commands_tx.send(command).await.unwrap();
        }
        stop.send(true).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), transport).await;
        assert!(
            ended.is_ok(),
            "the transport did not stop while its write was blocked"
        );
        drop(master);
    }
}
