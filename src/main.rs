//! The `vitalsd` binary: parses the command line and hands over to the library. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vitalsd",
    version,
    about = "Medical device gateway for remote patient monitoring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
    },
    /// Validate the configuration; lists every error with its key path.
    CheckConfig {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
    },
    /// Decode captured bytes with the daemon's decoders; one JSON reading per line.
    Decode {
        /// List the protocol names.
        #[arg(long, exclusive = true)]
        list: bool,
        /// A protocol name from `--list`.
        #[arg(required_unless_present = "list")]
        protocol: Option<String>,
        /// The bytes, as hex, with or without spaces.
        #[arg(required_unless_present = "list")]
        hex: Vec<String>,
    },
    /// Lists nearby Bluetooth health devices, updating live.
    Scan {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
        /// How long to scan.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        #[arg(long)]
        json: bool,
    },
    /// Binds a Bluetooth device to this hub and bonds with it.
    Pair {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
        /// The device address, such as AA:BB:CC:DD:EE:FF.
        address: String,
        /// The passkey the device shows, for devices that pair with one.
        #[arg(long)]
        passkey: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Unbinds a Bluetooth device and removes the hub's bond with it.
    Unpair {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Lists the serial ports present and the protocol each seems to speak.
    Serial {
        /// Marks the ports this configuration reads (they are not listened to).
        #[arg(long, env = "VITALSD_CONFIG")]
        config: Option<PathBuf>,
        /// Seconds to listen at each line setting on ports not in use; 0 to skip listening.
        #[arg(long, default_value_t = 3)]
        listen: u64,
        #[arg(long)]
        json: bool,
    },
    /// Lists the bound Bluetooth devices.
    Devices {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Works on the outbox's files; the daemon must be stopped.
    Outbox {
        #[command(subcommand)]
        action: OutboxCommand,
    },
    /// Shows the outbox: pending and held readings, the hub clock, deliveries, the last broker error.
    Status {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Copies every intact record of moved-aside outbox files into the live outbox, deduplicated by id.
    Salvage {
        #[arg(
            long,
            env = "VITALSD_CONFIG",
            default_value = "/etc/vitalsd/vitalsd.toml"
        )]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Files to salvage; by default every outbox.db.broken-* and outbox.db.damaged-* in the state directory.
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => vitalsd::daemon::main(&config),
        Command::CheckConfig { config } => vitalsd::cli::check_config(&config),
        Command::Decode { list: true, .. } => vitalsd::cli::list_protocols(),
        Command::Decode { protocol, hex, .. } => {
            vitalsd::cli::decode(protocol.as_deref().unwrap_or_default(), &hex)
        }
        Command::Status { config, json } => vitalsd::cli::status(&config, json),
        Command::Outbox {
            action:
                OutboxCommand::Salvage {
                    config,
                    json,
                    files,
                },
        } => vitalsd::cli::salvage(&config, &files, json),
        Command::Scan {
            config,
            seconds,
            json,
        } => vitalsd::ble_cli::scan(&config, seconds, json),
        Command::Pair {
            config,
            address,
            passkey,
            json,
        } => vitalsd::ble_cli::pair(&config, &address, passkey, json),
        Command::Unpair {
            config,
            address,
            json,
        } => vitalsd::ble_cli::unpair(&config, &address, json),
        Command::Devices { config, json } => vitalsd::ble_cli::devices(&config, json),
        Command::Serial {
            config,
            listen,
            json,
        } => vitalsd::serial_cli::serial(config.as_deref(), listen, json),
    }
}
