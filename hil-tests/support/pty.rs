//! A simulated serial device: a real pseudo-terminal whose slave side is reached through a
//! `/dev/serial/by-id`-style symlink, which disappears on unplug like the real one.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

pub struct SimulatedPort {
    link: PathBuf,
    /// The pseudo-terminal's slave (`/dev/pts/N`) while plugged in: what the daemon holds open.
    tty: Option<PathBuf>,
    ends: Option<(File, OwnedFd)>,
}

impl SimulatedPort {
    /// Creates the pseudo-terminal and the link at `link` (e.g. `<tmp>/by-id/usb-Nonin-if00-port0`).
    pub fn plug_in(link: &Path) -> SimulatedPort {
        let mut port = SimulatedPort {
            link: link.to_path_buf(),
            tty: None,
            ends: None,
        };
        port.plug();
        port
    }

    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The terminal device behind the link while plugged in, as a process's open descriptors name it.
    pub fn tty(&self) -> &Path {
        self.tty.as_deref().expect("device is plugged in")
    }

    /// Plugs the device (back) in: a new pseudo-terminal behind the same link.
    pub fn plug(&mut self) {
        assert!(self.ends.is_none(), "already plugged in");
        // Both ends are close-on-exec from the start: a daemon spawned by this or a parallel test must not
        // inherit them, or closing them here would not hang up the line.
        let master =
            posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).expect("posix_openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let slave_path = PathBuf::from(ptsname_r(&master).expect("ptsname"));
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&slave_path)
            .expect("open the pty slave")
            .into();
        // Raw mode on the slave before any byte flows: the line discipline would otherwise translate CR
        // and echo bytes back to the device.
        let mut termios = tcgetattr(slave.as_fd()).expect("tcgetattr");
        cfmakeraw(&mut termios);
        tcsetattr(slave.as_fd(), SetArg::TCSANOW, &termios).expect("tcsetattr");
        if let Some(parent) = self.link.parent() {
            std::fs::create_dir_all(parent).expect("create by-id dir");
        }
        let _ = std::fs::remove_file(&self.link);
        std::os::unix::fs::symlink(&slave_path, &self.link).expect("symlink to the pty");
        self.tty = Some(slave_path);
        // The test keeps the slave open too, so the master sees no hang-up while the daemon is restarted.
        self.ends = Some((File::from(OwnedFd::from(master)), slave));
    }

    /// Unplugs the device: the link disappears and the pseudo-terminal is closed.
    pub fn unplug(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        self.ends = None;
        self.tty = None;
    }

    /// Reads what the host sent the device for up to `duration` (commands such as a stream start).
    pub fn read_for(&mut self, duration: Duration) -> Vec<u8> {
        let (master, _) = self.ends.as_mut().expect("device is plugged in");
        let deadline = Instant::now() + duration;
        let mut received = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let timeout =
                nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
            let mut fds = [nix::poll::PollFd::new(
                master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let mut buffer = [0u8; 512];
            match master.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
            }
        }
        received
    }

    /// Reads what the host sends the device until `done` says it is all there or `timeout` passes.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut received = Vec::new();
        while !done(&received) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            received.extend(self.read_for(left.min(Duration::from_millis(50))));
        }
        received
    }

    /// Bytes the device sent that the host has not read yet.
    pub fn unread(&self) -> usize {
        let (_, slave) = self.ends.as_ref().expect("device is plugged in");
        let mut count: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points at `count`; the descriptor is
        // open for the call.
        let result = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(slave),
                libc::FIONREAD,
                &mut count,
            )
        };
        assert_eq!(
            result,
            0,
            "FIONREAD on the pty: {}",
            std::io::Error::last_os_error()
        );
        count as usize
    }

    /// Writes bytes as the device would, waiting as long as the line is full (a host that stopped reading)
    /// unless `give_up` says to stop; returns whether all of them went out.
    pub fn write_waiting(&mut self, bytes: &[u8], give_up: impl Fn() -> bool) -> bool {
        let (master, _) = self.ends.as_mut().expect("device is plugged in");
        let mut rest = bytes;
        while !rest.is_empty() {
            if give_up() {
                return false;
            }
            let mut fds = [nix::poll::PollFd::new(
                master.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            )];
            if !matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u8)), Ok(n) if n > 0)
            {
                continue;
            }
            // One byte at a time once the line has room: a write never blocks past what the poll promised.
            match master.write(&rest[..1]) {
                Ok(n) => rest = &rest[n..],
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => panic!("writing to the simulated device failed: {error}"),
            }
        }
        true
    }

    /// Writes bytes as the device would; gives up if the line takes nothing for 30 s. A large write
    /// takes as long as the host needs to read it, which on a loaded machine is a while.
    pub fn write(&mut self, bytes: &[u8]) {
        let (master, _) = self.ends.as_mut().expect("device is plugged in");
        let stall = Duration::from_secs(30);
        let mut progress = Instant::now();
        let mut rest = bytes;
        while !rest.is_empty() {
            match master.write(rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    progress = Instant::now();
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => panic!("writing to the simulated device failed: {error}"),
            }
            assert!(
                progress.elapsed() < stall,
                "the simulated device's line stayed full for {stall:?}"
            );
        }
        master.flush().expect("flush pty");
    }
}
