//! The daemon's control socket (`{runtime_dir}/control.sock`, mode 0660 so only the service's group may
//! use it): the technician commands send one JSON request line and read JSON event lines back, ending with
//! a `done` or `error` event. Without a daemon the commands run the same operations themselves.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::ble::session::SharedDevices;
use crate::technician;

pub const SOCKET: &str = "control.sock";
/// The longest scan a request may ask for.
const MAX_SCAN: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Scan {
        seconds: u64,
    },
    Pair {
        address: String,
        passkey: Option<u32>,
    },
    Unpair {
        address: String,
    },
    Devices,
}

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET)
}

/// Runs one request to completion, sending its events; the last is `done` or `error`.
pub async fn execute(
    request: Request,
    adapter: &str,
    devices: &SharedDevices,
    events: &mpsc::Sender<serde_json::Value>,
) {
    let sender = events.clone();
    // Progress events may be dropped if the reader is slow; the final event is always sent.
    let mut emit = move |event: serde_json::Value| {
        let _ = sender.try_send(event);
    };
    let result = match request {
        Request::Scan { seconds } => {
            let duration = Duration::from_secs(seconds).min(MAX_SCAN);
            technician::scan(adapter, duration, devices, &mut emit).await
        }
        Request::Pair { address, passkey } => {
            technician::pair(adapter, &address, passkey, devices, &mut emit).await
        }
        Request::Unpair { address } => {
            technician::unpair(adapter, &address, devices, &mut emit).await
        }
        Request::Devices => {
            emit(technician::list(devices));
            Ok(())
        }
    };
    let last = match result {
        Ok(()) => json!({"event": "done"}),
        Err(error) => json!({"event": "error", "message": error.to_string()}),
    };
    let _ = events.send(last).await;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Serves the control socket until `shutdown`.
pub async fn serve(
    runtime_dir: PathBuf,
    adapter: String,
    devices: SharedDevices,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ControlError> {
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
    tracing::info!(path = %path.display(), "Control socket ready.");
    let mut clients = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => clients.push(handle(stream, adapter.clone(), devices.clone())),
                Err(error) => tracing::warn!(%error, "Control socket accept failed."),
            },
            Some(()) = clients.next(), if !clients.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn handle(stream: UnixStream, adapter: String, devices: SharedDevices) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(reader);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(error) => {
            let reply = json!({"event": "error", "message": format!("bad request: {error}")});
            let _ = writer.write_all(format!("{reply}\n").as_bytes()).await;
            return;
        }
    };
    let (events_tx, mut events_rx) = mpsc::channel(256);
    let work = execute(request, &adapter, &devices, &events_tx);
    tokio::pin!(work);
    let mut finished = false;
    loop {
        tokio::select! {
            _ = &mut work, if !finished => finished = true,
            event = events_rx.recv() => {
                let Some(event) = event else { break };
                let last = matches!(event["event"].as_str(), Some("done" | "error"));
                if writer.write_all(format!("{event}\n").as_bytes()).await.is_err() {
                    return;
                }
                if last {
                    break;
                }
            }
        }
    }
}

/// Sends a request to a running daemon and passes each event to `on_event`; `Ok(None)` when no daemon
/// listens, so the caller runs the operation itself.
pub async fn request(
    runtime_dir: &Path,
    request: &Request,
    on_event: &mut dyn FnMut(&serde_json::Value),
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
    writer.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or(json!({"event": "error", "message": line}));
        let last = matches!(event["event"].as_str(), Some("done" | "error"));
        on_event(&event);
        if last {
            break;
        }
    }
    Ok(Some(()))
}
