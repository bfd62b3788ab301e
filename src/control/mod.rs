//! The daemon's control socket (`{runtime_dir}/control.sock`, mode 0660 so only the service's group may
//! use it): the technician commands send one JSON request line and read JSON event lines back, ending with
//! a `done` or `error` event; an event that asks a question (`passkey_requested`) is answered by one JSON
//! reply line on the same connection. Without a daemon the commands run the same operations themselves.
//!
//! Anyone who can open the socket is held to limits, so a local client cannot take the daemon down: a
//! request is one line of at most [`MAX_REQUEST_BYTES`], sent within [`REQUEST_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] are served at once and the rest are told the daemon is busy; a client that stops
//! reading is dropped; accept errors (no file descriptors left) pause accepting instead of spinning; and
//! every warning about clients is rate-limited. `pair` and `unpair` change what the hub reads, so each is
//! written to the log with the peer's uid (from the kernel, `SO_PEERCRED`) and its outcome, and
//! `ble.admin_group` can reserve them for root, the daemon's user and that group.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ble::operations::{self, PasskeyEntry};
use crate::ble::session::SharedDevices;
use crate::config::AdminGroup;

mod protocol;
pub use protocol::{Event, Reply, Request};

pub const SOCKET: &str = "control.sock";
/// The longest scan a request may ask for.
const MAX_SCAN: Duration = Duration::from_secs(600);
/// The longest request line, newline not counted. A real request is under 100 bytes.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Clients served at once; a technician runs one command at a time, so this is generous.
pub const MAX_CLIENTS: usize = 16;
/// How long a client has to send its whole request line after connecting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one event may wait for a client that does not read before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning of each kind per interval; the next one says how many were held back.
const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The pause after a failed accept, doubling while accept keeps failing.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(50);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// How much of a request's address an audit line quotes.
const AUDIT_ADDRESS_CHARS: usize = 40;

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET)
}

/// Runs one request to completion, sending its events; the last is `done` or `error`. A question an
/// event asks (the passkey a device shows) is answered from `replies`. Returns the error message, if it
/// ended in one.
pub async fn execute(
    request: Request,
    adapter: &str,
    devices: &SharedDevices,
    events: &mpsc::Sender<Event>,
    mut replies: mpsc::Receiver<Reply>,
) -> Result<(), String> {
    let sender = events.clone();
    // Progress events may be dropped if the reader is slow; the final event is always sent.
    let mut emit = move |event: Event| {
        let _ = sender.try_send(event);
    };
    let result = match request {
        Request::Scan { seconds } => {
            let duration = Duration::from_secs(seconds).min(MAX_SCAN);
            operations::scan(adapter, duration, devices, &mut emit).await
        }
        Request::Pair { address, passkey } => {
            let passkey = match passkey {
                Some(passkey) => PasskeyEntry::Fixed(passkey),
                None => PasskeyEntry::Ask(&mut replies),
            };
            operations::pair(adapter, &address, passkey, devices, &mut emit).await
        }
        Request::Unpair { address } => {
            operations::unpair(adapter, &address, devices, &mut emit).await
        }
        Request::Devices => {
            emit(operations::list(devices));
            Ok(())
        }
    };
    let result = result.map_err(|error| error.to_string());
    let last = match &result {
        Ok(()) => Event::Done,
        Err(message) => Event::Error {
            message: message.clone(),
        },
    };
    let _ = events.send(last).await;
    result
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the server needs besides the listener.
pub struct ControlSettings {
    pub runtime_dir: PathBuf,
    pub adapter: String,
    pub admin_group: Option<AdminGroup>,
}

/// What a client handler shares with the others.
struct Context {
    adapter: String,
    devices: SharedDevices,
    admin_group: Option<AdminGroup>,
    /// The daemon's own user may change its own state files anyway, so it is never refused.
    daemon_uid: u32,
    /// Refused state changes are audited at most once per interval, so a client outside the admin group cannot
    /// fill the disk with refusals; the next line counts the ones held back.
    refusals: std::sync::Mutex<RateLimit>,
    /// Failed state changes (a bad address, a device that does not answer) change nothing and anyone in
    /// the socket's group can cause them as fast as they connect, so they are rate-limited like refusals.
    failures: std::sync::Mutex<RateLimit>,
}

/// Serves the control socket until `shutdown`.
pub async fn serve(
    settings: ControlSettings,
    devices: SharedDevices,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ControlError> {
    let ControlSettings {
        runtime_dir,
        adapter,
        admin_group,
    } = settings;
    let path = socket_path(&runtime_dir);
    let listen_error = |source| ControlError::Listen {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&runtime_dir).map_err(listen_error)?;
    // A socket file left by a daemon that was killed would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(listen_error)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .map_err(listen_error)?;
    tracing::info!(
        path = %path.display(),
        admin_group = admin_group.as_ref().map_or("(any member of the socket's group)", |group| group.name.as_str()),
        "Control socket ready."
    );
    let context = Arc::new(Context {
        adapter,
        devices,
        admin_group,
        daemon_uid: nix::unistd::geteuid().as_raw(),
        refusals: std::sync::Mutex::new(RateLimit::new(LOG_INTERVAL)),
        failures: std::sync::Mutex::new(RateLimit::new(LOG_INTERVAL)),
    });
    let mut warnings = Warnings::new();
    let mut clients = FuturesUnordered::new();
    let mut accept_pause = ACCEPT_PAUSE_MIN;
    let mut paused_until: Option<Instant> = None;
    loop {
        let resume = async {
            match paused_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept(), if paused_until.is_none() => match accepted {
                Ok((stream, _)) => {
                    accept_pause = ACCEPT_PAUSE_MIN;
                    if clients.len() >= MAX_CLIENTS {
                        refuse_busy(&stream);
                        if let Some(held_back) = warnings.busy.allow(Instant::now()) {
                            tracing::warn!(
                                clients = MAX_CLIENTS,
                                held_back,
                                "Control socket busy: refused a client."
                            );
                        }
                    } else {
                        let peer = Peer::of(&stream);
                        clients.push(handle(stream, peer, context.clone()));
                    }
                }
                // Out of file descriptors (EMFILE, ENFILE) or memory: the pending connection stays
                // queued, so accepting again at once would fail again at once. Pausing lets clients
                // finish and free theirs; the queued connections wait in the kernel meanwhile.
                Err(error) => {
                    paused_until = Some(Instant::now() + accept_pause);
                    accept_pause = (accept_pause * 2).min(ACCEPT_PAUSE_MAX);
                    if let Some(held_back) = warnings.accept.allow(Instant::now()) {
                        tracing::warn!(%error, held_back, "Control socket accept failed; pausing.");
                    }
                }
            },
            () = resume => paused_until = None,
            Some(ending) = clients.next(), if !clients.is_empty() => warnings.client_ended(ending),
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Tells a client over the limit why it is turned away. The write never waits: a fresh socket's buffer
/// has room for one line, and the accept loop must not stall on a client.
fn refuse_busy(stream: &UnixStream) {
    let reply = Event::Error {
        message: format!(
            "the daemon is busy ({MAX_CLIENTS} clients connected); try again in a few seconds"
        ),
    };
    let _ = stream.try_write(reply.to_line().as_bytes());
}

/// The rate limiters for the server's warnings, one per kind, so one flood cannot hide another.
struct Warnings {
    accept: RateLimit,
    busy: RateLimit,
    dropped: RateLimit,
}

impl Warnings {
    fn new() -> Warnings {
        Warnings {
            accept: RateLimit::new(LOG_INTERVAL),
            busy: RateLimit::new(LOG_INTERVAL),
            dropped: RateLimit::new(LOG_INTERVAL),
        }
    }

    fn client_ended(&mut self, ending: ClientEnding) {
        let now = Instant::now();
        match ending {
            ClientEnding::Dropped(reason) => {
                if let Some(held_back) = self.dropped.allow(now) {
                    tracing::warn!(reason, held_back, "Control socket dropped a client.");
                }
            }
            ClientEnding::Served | ClientEnding::Left | ClientEnding::Refused => {}
        }
    }
}

/// The connecting process as the kernel recorded it at `connect` (`SO_PEERCRED`): it cannot be forged
/// by the client, and it stays the same if the process changes its ids afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Absent when the kernel did not say (it always does on Linux); -1 in the log.
    pub pid: i32,
}

impl Peer {
    fn of(stream: &UnixStream) -> Option<Peer> {
        stream.peer_cred().ok().map(|cred| Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().unwrap_or(-1),
        })
    }
}

/// Whether `peer` may pair or unpair. Without an admin group anyone who could open the socket may;
/// with one, root, the daemon's own user, and the group's members by primary group or by the system's
/// group database (`groups_of` gives the supplementary groups of a uid with a primary gid).
pub fn may_change_state(
    admin_group: Option<&AdminGroup>,
    peer: Option<Peer>,
    daemon_uid: u32,
    groups_of: impl FnOnce(u32, u32) -> Vec<u32>,
) -> bool {
    let Some(group) = admin_group else {
        return true;
    };
    let Some(peer) = peer else {
        return false;
    };
    peer.uid == 0
        || peer.uid == daemon_uid
        || peer.gid == group.gid
        || groups_of(peer.uid, peer.gid).contains(&group.gid)
}

/// The groups the system's database gives the user with this uid (`getgrouplist`), as `id` shows them.
/// The peer's own supplementary groups are not in `SO_PEERCRED`, and its `/proc` entry is hidden from the
/// service by `ProtectProc=invisible`; only root can give a process groups its user is not in, and root
/// is allowed anyway.
fn configured_groups(uid: u32, gid: u32) -> Vec<u32> {
    let user = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user,
        _ => return Vec::new(),
    };
    let Ok(name) = CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .map(|groups| groups.into_iter().map(|group| group.as_raw()).collect())
        .unwrap_or_default()
}

/// A state change as the audit line records it; the passkey is never part of it.
#[derive(Debug)]
struct Audit {
    command: &'static str,
    /// The address as the client sent it, cut short: it is the client's text.
    address: String,
    peer: Peer,
}

impl Audit {
    fn new(command: &'static str, address: &str, peer: Option<Peer>) -> Audit {
        Audit {
            command,
            address: address.chars().take(AUDIT_ADDRESS_CHARS).collect(),
            peer: peer.unwrap_or(Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: -1,
            }),
        }
    }

    /// Written for every state change a peer was allowed to start that did change state (or may have:
    /// abandoned midway), never rate-limited. Failures changed nothing and are rate-limited, with a count
    /// of those held back.
    fn record(&self, outcome: &str, failures: &std::sync::Mutex<RateLimit>) {
        let held_back = if outcome.starts_with("failed") {
            let allowed = failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .allow(Instant::now());
            match allowed {
                Some(held_back) => held_back,
                None => return,
            }
        } else {
            0
        };
        tracing::info!(
            command = self.command,
            address = ?self.address,
            peer_uid = self.peer.uid,
            peer_gid = self.peer.gid,
            peer_pid = self.peer.pid,
            outcome,
            held_back,
            "Audit: control request to change bound devices."
        );
    }

    fn refused(&self, limit: &std::sync::Mutex<RateLimit>) {
        let allowed = limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(Instant::now());
        if let Some(held_back) = allowed {
            tracing::warn!(
                command = self.command,
                address = ?self.address,
                peer_uid = self.peer.uid,
                peer_gid = self.peer.gid,
                peer_pid = self.peer.pid,
                held_back,
                "Audit: control request refused: not root, the daemon's user or a member of ble.admin_group."
            );
        }
    }
}

/// How a client's connection ended, for the server to log.
enum ClientEnding {
    /// The request ran (and was audited if it changed state).
    Served,
    /// Closed before sending a request, or went away: nothing to say.
    Left,
    /// Broke a limit or sent something that is not a request.
    Dropped(&'static str),
    /// A state change from a peer without the right (already logged).
    Refused,
}

async fn handle(stream: UnixStream, peer: Option<Peer>, context: Arc<Context>) -> ClientEnding {
    let (mut reader, mut writer) = stream.into_split();
    let line = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_request_line(&mut reader, MAX_REQUEST_BYTES),
    )
    .await
    {
        Ok(Ok(line)) => line,
        Ok(Err(RequestLineError::Closed)) => return ClientEnding::Left,
        Ok(Err(RequestLineError::TooLong)) => {
            reply_error(
                &mut writer,
                &format!("request longer than {MAX_REQUEST_BYTES} bytes: a request is one short JSON line"),
            )
            .await;
            return ClientEnding::Dropped("request too long");
        }
        Err(_) => {
            reply_error(
                &mut writer,
                &format!(
                    "no request line within {} s of connecting",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )
            .await;
            return ClientEnding::Dropped("no request in time");
        }
    };
    let request: Request = match serde_json::from_slice(&line) {
        Ok(request) => request,
        Err(error) => {
            reply_error(&mut writer, &format!("bad request: {error}")).await;
            return ClientEnding::Dropped("not a request");
        }
    };
    let mut audit = request
        .changes_state()
        .map(|(command, address)| Audit::new(command, address, peer));
    if let Some(refused) = audit.take_if(|_| {
        !may_change_state(
            context.admin_group.as_ref(),
            peer,
            context.daemon_uid,
            configured_groups,
        )
    }) {
        // Logged before the client hears of it, so the line is there when the command returns.
        refused.refused(&context.refusals);
        let group = context
            .admin_group
            .as_ref()
            .map_or("", |group| group.name.as_str());
        reply_error(
            &mut writer,
            &format!(
                "{} needs root or membership of group {group:?} (ble.admin_group)",
                refused.command
            ),
        )
        .await;
        return ClientEnding::Refused;
    }
    let (events_tx, mut events_rx) = mpsc::channel(256);
    let (replies_tx, replies_rx) = mpsc::channel(1);
    let work = execute(
        request,
        &context.adapter,
        &context.devices,
        &events_tx,
        replies_rx,
    );
    tokio::pin!(work);
    let replies = read_replies(reader, replies_tx);
    tokio::pin!(replies);
    let mut replies_ended = false;
    let mut result = None;
    loop {
        tokio::select! {
            outcome = &mut work, if result.is_none() => result = Some(outcome),
            () = &mut replies, if !replies_ended => replies_ended = true,
            event = events_rx.recv() => {
                let Some(event) = event else { break };
                let last = event.is_last();
                // `execute` returns as it sends its final event, so the outcome is known here; the
                // audit line is written before the client hears the outcome.
                if last {
                    if let Some(audit) = audit.take() {
                        audit.record(&outcome_text(result.as_ref()), &context.failures);
                    }
                }
                let line = event.to_line();
                let written = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(line.as_bytes())).await;
                if !matches!(written, Ok(Ok(()))) {
                    // Dropping `work` cancels the operation, as it always has when the technician's
                    // command goes away.
                    if let Some(audit) = audit.take() {
                        audit.record(&outcome_text(result.as_ref()), &context.failures);
                    }
                    return match written {
                        Ok(Err(_)) => ClientEnding::Left,
                        _ => ClientEnding::Dropped("stopped reading its events"),
                    };
                }
                if last {
                    break;
                }
            }
        }
    }
    if let Some(audit) = audit {
        audit.record(&outcome_text(result.as_ref()), &context.failures);
    }
    ClientEnding::Served
}

/// Reads the client's replies after its request, one JSON line of at most [`MAX_REQUEST_BYTES`] each,
/// and hands them to the request. Ends, closing the channel (so a question still open gets no
/// passkey), when the client closes its side or sends a line that is not a reply. A reply is never
/// logged: it may carry a passkey.
async fn read_replies(reader: impl AsyncRead + Unpin, replies: mpsc::Sender<Reply>) {
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        if !matches!(read, Ok(read) if read > 0) {
            return;
        }
        let Ok(reply) = serde_json::from_slice::<Reply>(line.trim_ascii_end()) else {
            tracing::debug!(
                bytes = line.len(),
                "Control client sent a line that is not a reply; not reading more."
            );
            return;
        };
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

fn outcome_text(result: Option<&Result<(), String>>) -> String {
    match result {
        Some(Ok(())) => "done".to_string(),
        Some(Err(message)) => format!("failed: {message}"),
        None => "abandoned: the client went away before it finished".to_string(),
    }
}

async fn reply_error(writer: &mut OwnedWriteHalf, message: &str) {
    let reply = Event::Error {
        message: message.to_string(),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(reply.to_line().as_bytes())).await;
}

#[derive(Debug, PartialEq, Eq)]
enum RequestLineError {
    /// The client closed the connection before sending anything.
    Closed,
    TooLong,
}

/// Reads the request line through a [`LineLimiter`], so memory stays bounded whatever the client sends.
/// A line cut short by the end of the stream counts as sent, as `read_line` would take it.
async fn read_request_line(
    reader: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Vec<u8>, RequestLineError> {
    let mut limiter = LineLimiter::new(max);
    let mut chunk = [0u8; 1024];
    loop {
        let read = reader
            .read(&mut chunk)
            .await
            .map_err(|_| RequestLineError::Closed)?;
        let progress = if read == 0 {
            limiter.finish()
        } else {
            limiter.push(&chunk[..read])
        };
        match progress {
            LineProgress::NeedMore => {}
            LineProgress::Line(line) => return Ok(line),
            LineProgress::TooLong => return Err(RequestLineError::TooLong),
            LineProgress::Empty => return Err(RequestLineError::Closed),
        }
    }
}

/// Collects one line of at most `max` bytes (the newline not counted) from chunks as they arrive, and
/// says so as soon as the line is longer: it never holds more than `max` bytes.
#[derive(Debug)]
pub struct LineLimiter {
    line: Vec<u8>,
    max: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LineProgress {
    /// No newline yet, and what came is within the limit.
    NeedMore,
    /// The line, without its newline; anything after it is ignored.
    Line(Vec<u8>),
    /// More than `max` bytes without a newline.
    TooLong,
    /// The stream ended before any byte.
    Empty,
}

impl LineLimiter {
    pub fn new(max: usize) -> LineLimiter {
        LineLimiter {
            line: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> LineProgress {
        let (part, complete) = match chunk.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&chunk[..end], true),
            None => (chunk, false),
        };
        if self.line.len() + part.len() > self.max {
            self.line = Vec::new();
            return LineProgress::TooLong;
        }
        self.line.extend_from_slice(part);
        if complete {
            LineProgress::Line(std::mem::take(&mut self.line))
        } else {
            LineProgress::NeedMore
        }
    }

    /// The stream ended: what came is the line, if anything came.
    pub fn finish(&mut self) -> LineProgress {
        if self.line.is_empty() {
            LineProgress::Empty
        } else {
            LineProgress::Line(std::mem::take(&mut self.line))
        }
    }
}

/// Lets a message through at most once per `interval` and counts the ones held back in between, so a
/// flood of the same event costs one log line per interval.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)`: log now, saying `n` like messages were held back since the last one; `None`: hold
    /// this one back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Sends a request to a running daemon and passes each event on to `events`, writing each of
/// `replies` (answers to the questions events ask) back on the same connection; `Ok(None)` when no
/// daemon listens, so the caller runs the operation itself. Returns once the last event is passed on
/// (or the daemon closed), dropping `events`.
pub async fn request(
    runtime_dir: &Path,
    request: &Request,
    events: mpsc::Sender<Event>,
    mut replies: mpsc::Receiver<Reply>,
) -> std::io::Result<Option<()>> {
    let stream = match UnixStream::connect(socket_path(runtime_dir)).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(error) => return Err(error),
    };
    let (reader, mut writer) = stream.into_split();
    let line = serde_json::to_string(request).expect("serialisable") + "\n";
    // A daemon that refuses at once (busy) may close before the request is written; its reason is
    // still there to read, so a failed write counts only if the daemon said nothing.
    let written = writer.write_all(line.as_bytes()).await;
    let mut lines = BufReader::new(reader).lines();
    let mut heard = false;
    let mut replies_open = true;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                heard = true;
                let event = Event::from_line(&line);
                let last = event.is_last();
                if events.send(event).await.is_err() || last {
                    break;
                }
            }
            reply = replies.recv(), if replies_open => match reply {
                Some(reply) => {
                    let line = serde_json::to_string(&reply).expect("serialisable") + "\n";
                    // A daemon that went away is noticed as the end of its events.
                    let _ = writer.write_all(line.as_bytes()).await;
                }
                None => replies_open = false,
            },
        }
    }
    match written {
        Err(error) if !heard => Err(error),
        _ => Ok(Some(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_cut_at_its_newline_and_never_grows_past_the_limit() {
        use LineProgress::*;
        // Chunks as they arrive, then (when the stream ends) what `finish` says; limit 8 bytes.
        let table: &[(&[&[u8]], LineProgress)] = &[
            (&[b"{}\n"], Line(b"{}".to_vec())),
            (&[b"{\"a\"", b":1}\n"], Line(b"{\"a\":1}".to_vec())),
            (&[b"12345678\n"], Line(b"12345678".to_vec())),
            (&[b"1234", b"5678", b"\n"], Line(b"12345678".to_vec())),
            (&[b"123456789\n"], TooLong),
            (&[b"123456789"], TooLong),
            (&[b"1234", b"56789"], TooLong),
            (
                &[b"abc\ntrailing bytes after the line"],
                Line(b"abc".to_vec()),
            ),
            (&[b"\n"], Line(Vec::new())),
            // The stream ends without a newline: what came is the line.
            (&[b"abc"], Line(b"abc".to_vec())),
            (&[], Empty),
        ];
        for (chunks, expected) in table {
            let mut limiter = LineLimiter::new(8);
            let mut progress = NeedMore;
            for chunk in chunks.iter() {
                progress = limiter.push(chunk);
                if progress != NeedMore {
                    break;
                }
            }
            if progress == NeedMore {
                progress = limiter.finish();
            }
            assert_eq!(&progress, expected, "chunks {chunks:?}");
            assert!(limiter.line.capacity() <= 16, "held at most the limit");
        }
    }

    #[tokio::test]
    async fn a_request_line_is_read_within_the_limit_from_a_stream() {
        type Case = (&'static [u8], Result<&'static [u8], RequestLineError>);
        let table: [Case; 4] = [
            (
                b"{\"command\":\"devices\"}\n",
                Ok(b"{\"command\":\"devices\"}"),
            ),
            (b"", Err(RequestLineError::Closed)),
            (&[b'x'; 5000], Err(RequestLineError::TooLong)),
            (b"no newline", Ok(b"no newline")),
        ];
        for (input, expected) in table {
            let got = read_request_line(&mut &input[..], 4096).await;
            assert_eq!(
                got,
                expected.map(<[u8]>::to_vec),
                "input of {} bytes",
                input.len()
            );
        }
    }

    /// The replies `read_replies` hands on from what a client sent after its request.
    #[track_caller]
    fn check_replies(sent: &[u8], expected: &[Reply]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (replies_tx, mut replies_rx) = mpsc::channel(8);
        runtime.block_on(read_replies(sent, replies_tx));
        let mut got = Vec::new();
        while let Ok(reply) = replies_rx.try_recv() {
            got.push(reply);
        }
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(sent));
    }

    #[test]
    fn replies_are_read_one_line_each_until_the_client_closes_or_sends_something_else() {
        let passkey = |passkey| Reply::Passkey { passkey };
        check_replies(b"", &[]);
        check_replies(
            b"{\"reply\":\"passkey\",\"passkey\":123456}\n",
            &[passkey(123456)],
        );
        check_replies(
            b"{\"reply\":\"passkey\",\"passkey\":123456}",
            &[passkey(123456)],
        );
        check_replies(b"{\"reply\":\"cancel\"}\r\n", &[Reply::Cancel]);
        check_replies(
            b"{\"reply\":\"passkey\",\"passkey\":1}\n{\"reply\":\"cancel\"}\n",
            &[passkey(1), Reply::Cancel],
        );
        // Not a reply: reading stops there, and what follows is not read.
        check_replies(b"123456\n{\"reply\":\"passkey\",\"passkey\":123456}\n", &[]);
        check_replies(
            b"{\"reply\":\"cancel\"}\n{\"command\":\"devices\"}\n{\"reply\":\"cancel\"}\n",
            &[Reply::Cancel],
        );
        // A line over the limit is not read whole.
        let mut long = b"{\"reply\":\"cancel\"".to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_REQUEST_BYTES));
        long.extend(b"}\n");
        check_replies(&long, &[]);
    }

    #[test]
    fn a_flood_costs_one_line_per_interval_and_the_next_line_counts_what_was_held_back() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // (time in ms, expected answer) for one limiter with a 1 s interval.
        let table = [
            (0, Some(0)),
            (1, None),
            (500, None),
            (999, None),
            (1000, Some(3)),
            (1001, None),
            (5000, Some(1)),
            (5001, None),
            (5002, None),
            (9000, Some(2)),
            (9500, None),
        ];
        let mut limit = RateLimit::new(Duration::from_secs(1));
        for (ms, expected) in table {
            assert_eq!(limit.allow(at(ms)), expected, "at {ms} ms");
        }
    }

    #[test]
    fn who_may_pair_and_unpair() {
        let admins = AdminGroup {
            name: "vitalsd-admin".into(),
            gid: 990,
        };
        let daemon_uid = 995;
        let peer = |uid, gid| Some(Peer { uid, gid, pid: 42 });
        // (admin group, peer, the peer's groups from the group database, allowed)
        type Case<'a> = (Option<&'a AdminGroup>, Option<Peer>, &'a [u32], bool);
        let table: &[Case] = &[
            // No admin group: whoever can open the socket.
            (None, peer(1000, 1000), &[], true),
            (None, None, &[], true),
            // With one: root, the daemon's user, members by primary or supplementary group.
            (Some(&admins), peer(0, 0), &[], true),
            (Some(&admins), peer(daemon_uid, 995), &[], true),
            (Some(&admins), peer(1000, 990), &[], true),
            (Some(&admins), peer(1000, 1000), &[1000, 990], true),
            // Others, and a peer the kernel did not describe, are refused.
            (Some(&admins), peer(1000, 1000), &[1000, 995], false),
            (Some(&admins), peer(65534, 65534), &[], false),
            (Some(&admins), None, &[990], false),
        ];
        for (group, peer, groups, allowed) in table {
            assert_eq!(
                may_change_state(*group, *peer, daemon_uid, |_, _| groups.to_vec()),
                *allowed,
                "group {group:?} peer {peer:?} groups {groups:?}"
            );
        }
    }

    #[test]
    fn only_pair_and_unpair_change_state() {
        let table = [
            (Request::Scan { seconds: 10 }, None),
            (Request::Devices, None),
            (
                Request::Pair {
                    address: "AA:BB:CC:DD:EE:01".into(),
                    passkey: Some(123456),
                },
                Some(("pair", "AA:BB:CC:DD:EE:01")),
            ),
            (
                Request::Pair {
                    address: "AA:BB:CC:DD:EE:01".into(),
                    passkey: None,
                },
                Some(("pair", "AA:BB:CC:DD:EE:01")),
            ),
            (
                Request::Unpair {
                    address: "AA:BB:CC:DD:EE:01".into(),
                },
                Some(("unpair", "AA:BB:CC:DD:EE:01")),
            ),
        ];
        for (request, expected) in table {
            assert_eq!(request.changes_state(), expected, "{request:?}");
        }
    }
}
