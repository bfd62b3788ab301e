//! The `vitalsd` binary: parses the command line and hands over to the library. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vitalsd",
    // The git revision comes from build.rs ("unknown" in a build from a tarball without .git).
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VITALSD_GIT_REVISION"), ")"),
    about = "Medical device gateway for remote patient monitoring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config`, shared by every command that reads the configuration.
#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file; its drop-in directory `<file>.d/` is read too.
    #[arg(
        long = "config",
        env = "VITALSD_CONFIG",
        default_value = "/etc/vitalsd/vitalsd.toml"
    )]
    path: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the configuration; lists every error with its key path.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
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
        /// `reading.v1` (the MQTT payload) or `fhir` (a FHIR R4 transaction Bundle per reading).
        #[arg(long, default_value = "reading.v1", value_parser = ["reading.v1", "fhir"])]
        format: String,
        /// With `--format fhir`: add a national code set's codings (`dk`, `no`), as `[fhir] code_sets` does.
        #[arg(long = "code-set", requires = "format")]
        code_sets: Vec<String>,
        /// With `--format fhir`: the Observations' subject as SYSTEM|VALUE, as `[fhir] subject_system` and
        /// `subject_value` give it (without one the Bundles lack the subject the PHD profiles require).
        #[arg(long, requires = "format", value_name = "SYSTEM|VALUE")]
        subject: Option<String>,
    },
    /// Lists nearby Bluetooth health devices, updating live.
    Scan {
        #[command(flatten)]
        config: ConfigArg,
        /// How long to scan.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        #[arg(long)]
        json: bool,
    },
    /// Binds a Bluetooth device to this hub and bonds with it. When the device shows a passkey, asks
    /// for it ("Enter the passkey the device shows:") and reads it from stdin.
    Pair {
        #[command(flatten)]
        config: ConfigArg,
        /// The device address, such as AA:BB:CC:DD:EE:FF.
        address: String,
        /// A passkey given in advance, for devices whose passkey is fixed (printed on the device or in
        /// its manual); without it the passkey is asked for when the device asks.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=999_999))]
        passkey: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Unbinds a Bluetooth device and removes the hub's bond with it.
    Unpair {
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Works on the outbox's files; the daemon must be stopped.
    Outbox {
        #[command(subcommand)]
        action: OutboxCommand,
    },
    /// Tools for fleet operators: key pairs and signed commands (README, "Fleet operations").
    Fleet {
        #[command(subcommand)]
        action: FleetCommand,
    },
    /// Shows the outbox: pending and held readings, the hub clock, deliveries, the last broker error.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Writes the man pages and shell completions into DIR (the Debian package's build uses it).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Copies every intact record of moved-aside outbox files into the live outbox, deduplicated by id.
    Salvage {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        /// Files to salvage; by default every outbox.db.broken-* and outbox.db.damaged-* in the state directory.
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Makes an Ed25519 key pair: DIR/NAME.key (private, PKCS#8 PEM) and DIR/NAME.pub (for the hubs).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// The key's name, which commands signed with it give as key_id.
        #[arg(long, default_value = "ops")]
        name: String,
    },
    /// Prints a signed command envelope, to publish retained on {prefix}/{hub}/cmd/{request_id}.
    Sign {
        /// The private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The key_id hubs know the key by; defaults to the key file's name without extension.
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long)]
        hub: String,
        #[arg(long)]
        command: String,
        /// The command's arguments as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        /// How long the command stays valid, such as 1h or 2days.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
        /// Defaults to a random UUID.
        #[arg(long)]
        request_id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only print (no socket they could be cut off from) end quietly when the reader of their
    // output goes away, as `status | head` expects, instead of panicking on the broken pipe.
    if matches!(
        cli.command,
        Command::CheckConfig { .. }
            | Command::Decode { .. }
            | Command::Status { .. }
            | Command::Serial { .. }
            | Command::Fleet { .. }
    ) {
        vitalsd::cli::end_quietly_when_output_is_closed();
    }
    match cli.command {
        Command::Run { config } => vitalsd::cli::run::main(&config.path),
        Command::CheckConfig { config } => vitalsd::cli::check_config(&config.path),
        Command::Decode { list: true, .. } => vitalsd::cli::list_protocols(),
        Command::Decode {
            protocol,
            hex,
            format,
            code_sets,
            subject,
            ..
        } => vitalsd::cli::decode(
            protocol.as_deref().unwrap_or_default(),
            &hex,
            (format == "fhir").then_some((code_sets.as_slice(), subject.as_deref())),
        ),
        Command::Status { config, json } => vitalsd::cli::status(&config.path, json),
        Command::Outbox {
            action:
                OutboxCommand::Salvage {
                    config,
                    json,
                    files,
                },
        } => vitalsd::cli::salvage(&config.path, &files, json),
        Command::Scan {
            config,
            seconds,
            json,
        } => vitalsd::cli::ble::scan(&config.path, seconds, json),
        Command::Pair {
            config,
            address,
            passkey,
            json,
        } => vitalsd::cli::ble::pair(&config.path, &address, passkey, json),
        Command::Unpair {
            config,
            address,
            json,
        } => vitalsd::cli::ble::unpair(&config.path, &address, json),
        Command::Devices { config, json } => vitalsd::cli::ble::devices(&config.path, json),
        Command::Serial {
            config,
            listen,
            json,
        } => vitalsd::cli::serial::serial(config.as_deref(), listen, json),
        Command::Fleet {
            action: FleetCommand::Keygen { out, name },
        } => vitalsd::cli::fleet::keygen(&out, &name),
        Command::Fleet {
            action:
                FleetCommand::Sign {
                    key,
                    key_id,
                    hub,
                    command,
                    args,
                    valid_for,
                    request_id,
                },
        } => vitalsd::cli::fleet::sign(&vitalsd::cli::fleet::SignRequest {
            key: &key,
            key_id: key_id.as_deref(),
            hub: &hub,
            command: &command,
            args: &args,
            valid_for,
            request_id: request_id.as_deref(),
        }),
        Command::GenerateDocs { dir } => vitalsd::cli::generate_docs(Cli::command(), &dir),
    }
}
