//! The commands a hub takes from its fleet, and their arguments: a verified [`Command`]'s name and
//! `args` in, a typed [`Action`] or the reason it is refused out. Pure.

use std::time::Duration;

use serde::Deserialize;

use super::envelope::{Command, Refusal};
use crate::state::devices::normalise_address;

/// How long `bind_device` waits for the device to advertise in pairing mode when `window_s` is not given.
pub const DEFAULT_BIND_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest `window_s` taken: a command is valid for a week at most.
const MAX_BIND_WINDOW_S: u64 = 7 * 24 * 3600;

/// The command names the hub advertises in its twin's `capabilities`, in this order.
pub const CAPABILITIES: [&str; 5] = [
    "bind_device",
    "unbind_device",
    "set_serial_ports",
    "diagnostics",
    "restart",
];

/// A command the hub knows, with checked arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Bind a Bluetooth device and bond with it when it next advertises in pairing mode.
    BindDevice {
        address: String,
        passkey: Option<u32>,
        window: Duration,
    },
    /// Forget a Bluetooth device: by address, or by its reading's device id `ble:ADDRESS`.
    UnbindDevice {
        address: String,
    },
    /// Replace the `[[serial]]` list with these entries (TOML tables, as JSON), through the fleet drop-in.
    SetSerialPorts {
        ports: Vec<serde_json::Value>,
    },
    Diagnostics,
    Restart,
}

/// Why arguments were refused, for the state's `detail`.
pub type ArgsError = (Refusal, String);

impl Action {
    pub fn parse(command: &Command) -> Result<Action, ArgsError> {
        let args = if command.args.is_null() {
            serde_json::json!({})
        } else {
            command.args.clone()
        };
        let invalid = |error: serde_json::Error| (Refusal::InvalidArgs, error.to_string());
        match command.command.as_str() {
            "bind_device" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Args {
                    transport: String,
                    address: String,
                    passkey: Option<u32>,
                    window_s: Option<u64>,
                }
                let args: Args = serde_json::from_value(args).map_err(invalid)?;
                if args.transport != "ble" {
                    let detail = format!(
                        "transport {:?}: only \"ble\" devices are bound",
                        args.transport
                    );
                    return Err((Refusal::InvalidArgs, detail));
                }
                if args.passkey.is_some_and(|passkey| passkey > 999_999) {
                    return Err((
                        Refusal::InvalidArgs,
                        "passkey: at most six digits".to_string(),
                    ));
                }
                let window = match args.window_s {
                    None => DEFAULT_BIND_WINDOW,
                    Some(seconds @ 1..=MAX_BIND_WINDOW_S) => Duration::from_secs(seconds),
                    Some(seconds) => {
                        let detail =
                            format!("window_s: must be 1 to {MAX_BIND_WINDOW_S}, found {seconds}");
                        return Err((Refusal::InvalidArgs, detail));
                    }
                };
                Ok(Action::BindDevice {
                    address: address(&args.address)?,
                    passkey: args.passkey,
                    window,
                })
            }
            "unbind_device" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Args {
                    address: Option<String>,
                    id: Option<String>,
                }
                let args: Args = serde_json::from_value(args).map_err(invalid)?;
                let text = match (args.address, args.id) {
                    (Some(address), None) => address,
                    (None, Some(id)) => match id.strip_prefix("ble:") {
                        Some(address) => address.to_string(),
                        None => {
                            let detail =
                                format!("id {id:?}: Bluetooth device ids start with \"ble:\"");
                            return Err((Refusal::InvalidArgs, detail));
                        }
                    },
                    _ => {
                        let detail = "give exactly one of \"address\" and \"id\"".to_string();
                        return Err((Refusal::InvalidArgs, detail));
                    }
                };
                Ok(Action::UnbindDevice {
                    address: address(&text)?,
                })
            }
            "set_serial_ports" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Args {
                    ports: Vec<serde_json::Map<String, serde_json::Value>>,
                }
                let args: Args = serde_json::from_value(args).map_err(invalid)?;
                Ok(Action::SetSerialPorts {
                    ports: args
                        .ports
                        .into_iter()
                        .map(serde_json::Value::Object)
                        .collect(),
                })
            }
            "diagnostics" | "restart" => {
                let empty = args.as_object().is_some_and(|args| args.is_empty());
                if !empty {
                    return Err((Refusal::InvalidArgs, "takes no arguments: {}".to_string()));
                }
                Ok(if command.command == "restart" {
                    Action::Restart
                } else {
                    Action::Diagnostics
                })
            }
            other => Err((
                Refusal::UnknownCommand,
                format!("{other:?}; this hub takes {}", CAPABILITIES.join(", ")),
            )),
        }
    }
}

fn address(text: &str) -> Result<String, ArgsError> {
    normalise_address(text).map_err(|error| (Refusal::InvalidArgs, format!("address: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::envelope::COMMAND_SCHEMA;

    fn check(name: &str, args: &str, expected: Result<Action, Refusal>) {
        let command = Command {
            schema: COMMAND_SCHEMA.to_string(),
            hub_id: "hub".to_string(),
            request_id: "r".to_string(),
            issued_at: chrono::DateTime::UNIX_EPOCH,
            expires_at: chrono::DateTime::UNIX_EPOCH,
            command: name.to_string(),
            args: serde_json::from_str(args).unwrap(),
        };
        let found = Action::parse(&command).map_err(|(refusal, _)| refusal);
        assert_eq!(found, expected, "{name} {args}");
    }

    #[test]
    fn arguments_are_checked_per_command() {
        let cuff = "00:AA:01:01:00:01".to_string();
        let bind = |passkey, window| Action::BindDevice {
            address: cuff.clone(),
            passkey,
            window,
        };
        let bad = Err(Refusal::InvalidArgs);
        check(
            "bind_device",
            r#"{"transport":"ble","address":"00:aa:01:01:00:01"}"#,
            Ok(bind(None, DEFAULT_BIND_WINDOW)),
        );
        check(
            "bind_device",
            r#"{"transport":"ble","address":"00:AA:01:01:00:01","passkey":123456,"window_s":60}"#,
            Ok(bind(Some(123456), Duration::from_secs(60))),
        );
        check(
            "bind_device",
            r#"{"transport":"serial","address":"00:AA:01:01:00:01"}"#,
            bad.clone(),
        );
        check(
            "bind_device",
            r#"{"transport":"ble","address":"00:AA:01:01:00"}"#,
            bad.clone(),
        );
        check(
            "bind_device",
            r#"{"transport":"ble","address":"00:AA:01:01:00:01","passkey":1000000}"#,
            bad.clone(),
        );
        check(
            "bind_device",
            r#"{"transport":"ble","address":"00:AA:01:01:00:01","window_s":0}"#,
            bad.clone(),
        );
        check(
            "bind_device",
            r#"{"transport":"ble","address":"00:AA:01:01:00:01","colour":"red"}"#,
            bad.clone(),
        );
        check("bind_device", r#"{}"#, bad.clone());
        check(
            "unbind_device",
            r#"{"address":"00:AA:01:01:00:01"}"#,
            Ok(Action::UnbindDevice {
                address: cuff.clone(),
            }),
        );
        check(
            "unbind_device",
            r#"{"id":"ble:00:AA:01:01:00:01"}"#,
            Ok(Action::UnbindDevice {
                address: cuff.clone(),
            }),
        );
        check("unbind_device", r#"{"id":"serial:ttyUSB0"}"#, bad.clone());
        check(
            "unbind_device",
            r#"{"id":"ble:00:AA:01:01:00:01","address":"00:AA:01:01:00:01"}"#,
            bad.clone(),
        );
        check("unbind_device", r#"{}"#, bad.clone());
        check(
            "set_serial_ports",
            r#"{"ports":[{"path":"/dev/ttyUSB0","protocol":"nonin-df13"}]}"#,
            Ok(Action::SetSerialPorts {
                ports: vec![serde_json::json!({"path":"/dev/ttyUSB0","protocol":"nonin-df13"})],
            }),
        );
        check(
            "set_serial_ports",
            r#"{"ports":[]}"#,
            Ok(Action::SetSerialPorts { ports: vec![] }),
        );
        check("set_serial_ports", r#"{"ports":[1]}"#, bad.clone());
        check("set_serial_ports", r#"{}"#, bad.clone());
        check("diagnostics", r#"{}"#, Ok(Action::Diagnostics));
        check("diagnostics", r#"null"#, Ok(Action::Diagnostics));
        check("restart", r#"{}"#, Ok(Action::Restart));
        check("restart", r#"{"now":true}"#, bad);
        check("format_disk", r#"{}"#, Err(Refusal::UnknownCommand));
    }
}
