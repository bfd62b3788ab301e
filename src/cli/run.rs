//! `vitalsd run`: logging, the runtime, signals, and the exit code around [`crate::app::run`].

use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

pub fn main(config_path: &Path) -> ExitCode {
    let config = match super::load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(&config.log.level);
    // One process-wide TLS provider; ring avoids a C toolchain dependency when cross-building.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread is plenty for a handful of devices and one broker connection, and keeps memory small;
    // the outbox's SQLite work runs on its worker's own thread. (The fleet journal writes on this one: a
    // few small commits per fleet command, which are rare.)
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (trigger, shutdown) = watch::channel(false);
        // Installed before `app::run` starts: a spawned task runs only at the first await, and a SIGTERM
        // before that (while the outbox opens, which can mean copying a damaged file) would kill the
        // daemon without a word.
        let signals = tokio::spawn(wait_for_signals(install_signal_handlers(), trigger));
        let result = crate::app::run(config, config_path, shutdown).await;
        signals.abort();
        result
    });
    // `app::run` has given up waiting for anything still running (an outbox worker on slow storage, at
    // most); dropping the runtime would wait for it after all.
    runtime.shutdown_background();
    match result {
        Ok(crate::app::Stopped::Normally) => {
            tracing::info!("Stopped.");
            ExitCode::SUCCESS
        }
        Ok(crate::app::Stopped::ForRestart) => {
            // The same program, arguments and environment, in the same process: systemd keeps the service
            // (and its watchdog) as it is, and the configuration is read afresh.
            use std::os::unix::process::CommandExt as _;
            let mut args = std::env::args_os();
            let program = args.next().unwrap_or_default();
            let error = std::process::Command::new("/proc/self/exe")
                .arg0(program)
                .args(args)
                .exec();
            tracing::error!(%error, "Cannot start again; exiting so the service manager restarts the daemon.");
            ExitCode::FAILURE
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "vitalsd stopped on an error.");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .with(crate::log_tail::TailLayer)
        .init();
}

type Handlers = (
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
);

fn install_signal_handlers() -> Option<Handlers> {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(terminate), Ok(interrupt), Ok(hangup)) => Some((terminate, interrupt, hangup)),
        _ => {
            tracing::error!("Cannot install signal handlers.");
            None
        }
    }
}

async fn wait_for_signals(handlers: Option<Handlers>, trigger: watch::Sender<bool>) {
    let Some((mut terminate, mut interrupt, mut hangup)) = handlers else {
        return;
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::warn!("SIGHUP received: live reload is not supported yet; restart the service to apply a new configuration.");
            }
        }
    }
    let _ = trigger.send(true);
}
