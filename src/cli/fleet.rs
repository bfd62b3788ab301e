//! `vitalsd fleet keygen` and `vitalsd fleet sign`: the backend's side of signed commands, so any backend
//! can make a key pair and sign a command the way the hub checks it.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use ed25519_dalek::SigningKey;

use crate::fleet::envelope::{request_id_ok, seal, Command, COMMAND_SCHEMA};

/// `vitalsd fleet keygen --out DIR [--name NAME]`: writes `NAME.key` (PKCS#8 PEM, mode 0600) and
/// `NAME.pub` (SPKI PEM, what `[fleet] keys` names); an existing file is never overwritten.
pub fn keygen(dir: &Path, name: &str) -> ExitCode {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    // PKCS#8 v1, without the public key: OpenSSL 3.0 (Debian 12) does not read the v2 form.
    let bytes = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private = match bytes.to_pkcs8_pem(Default::default()) {
        Ok(pem) => pem,
        Err(error) => return fail(format!("cannot encode the private key: {error}")),
    };
    let public = match key.verifying_key().to_public_key_pem(Default::default()) {
        Ok(pem) => pem,
        Err(error) => return fail(format!("cannot encode the public key: {error}")),
    };
    // The directory is made if missing, readable by its owner only: it holds the private key.
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    if let Err(error) = made {
        return fail(format!("cannot create {}: {error}", dir.display()));
    }
    let (key_path, pub_path) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    for (path, text, mode) in [
        (&key_path, private.as_str(), 0o600),
        (&pub_path, public.as_str(), 0o644),
    ] {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
            });
        if let Err(error) = written {
            return fail(format!("cannot write {}: {error}", path.display()));
        }
    }
    println!("private key: {} (keep it off the hubs)", key_path.display());
    println!(
        "public key:  {} (install on hubs, [fleet] keys = {{ {name} = \"...\" }})",
        pub_path.display()
    );
    ExitCode::SUCCESS
}

/// What `vitalsd fleet sign` is given.
pub struct SignRequest<'a> {
    pub key: &'a Path,
    pub key_id: Option<&'a str>,
    pub hub: &'a str,
    pub command: &'a str,
    pub args: &'a str,
    pub valid_for: Duration,
    pub request_id: Option<&'a str>,
}

/// `vitalsd fleet sign`: prints the envelope to publish, retained, on `{prefix}/{hub}/cmd/{request_id}`;
/// the topic goes to stderr.
pub fn sign(request: &SignRequest) -> ExitCode {
    let pem = match std::fs::read_to_string(request.key) {
        Ok(pem) => pem,
        Err(error) => return fail(format!("cannot read {}: {error}", request.key.display())),
    };
    let key = match SigningKey::from_pkcs8_pem(&pem) {
        Ok(key) => key,
        Err(error) => {
            return fail(format!(
                "{} is not an Ed25519 private key in PKCS#8 PEM: {error}",
                request.key.display()
            ))
        }
    };
    let args: serde_json::Value = match serde_json::from_str(request.args) {
        Ok(args) => args,
        Err(error) => return fail(format!("--args is not JSON: {error}")),
    };
    if let Some(problem) = refused_by_every_hub(request, &args) {
        return fail(problem);
    }
    let commands = crate::fleet::commands::CAPABILITIES;
    if !commands.contains(&request.command) {
        eprintln!(
            "warning: hubs of this version refuse {:?} as unknown_command; they take {}",
            request.command,
            commands.join(", ")
        );
    }
    let key_id = request.key_id.map(str::to_string).unwrap_or_else(|| {
        let stem = request.key.file_stem().unwrap_or_default();
        stem.to_string_lossy().into_owned()
    });
    let issued_at = crate::clock::now_utc();
    let Ok(valid_for) = chrono::TimeDelta::from_std(request.valid_for) else {
        return fail("--valid-for is too long".to_string());
    };
    let command = Command {
        schema: COMMAND_SCHEMA.to_string(),
        hub_id: request.hub.to_string(),
        request_id: request
            .request_id
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        issued_at,
        expires_at: issued_at + valid_for,
        command: request.command.to_string(),
        args,
    };
    let envelope = seal(&command, &key, &key_id);
    eprintln!(
        "publish retained to {{topic_prefix}}/{}/cmd/{}",
        command.hub_id, command.request_id
    );
    println!(
        "{}",
        serde_json::to_string(&envelope).expect("an envelope serialises")
    );
    ExitCode::SUCCESS
}

/// What in a request every hub would refuse, so the tool does not sign it: a hub id no hub has, a request
/// id that is no topic level, arguments that are not an object, or no validity. A command this version
/// does not know is only warned about: hubs of a newer version may take it.
fn refused_by_every_hub(request: &SignRequest, args: &serde_json::Value) -> Option<String> {
    if !crate::config::hub_id_ok(request.hub) {
        Some(format!(
            "--hub {:?} is not a hub id: 1 to 64 characters of a-z, 0-9, '-' and '_'",
            request.hub
        ))
    } else if !request.request_id.is_none_or(request_id_ok) {
        Some("--request-id must be 1 to 128 characters without control characters, '/', '+' or '#' (it is a topic level)".to_string())
    } else if !args.is_object() {
        Some("--args must be a JSON object, such as '{}'".to_string())
    } else if request.valid_for.is_zero() {
        Some("--valid-for must be longer than 0s".to_string())
    } else {
        None
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(
        hub: &str,
        command: &str,
        args: &str,
        valid_for_s: u64,
        request_id: Option<&str>,
        expected: Option<&str>,
    ) {
        let request = SignRequest {
            key: Path::new("/k"),
            key_id: None,
            hub,
            command,
            args,
            valid_for: Duration::from_secs(valid_for_s),
            request_id,
        };
        let args = serde_json::from_str(args).unwrap();
        let problem = refused_by_every_hub(&request, &args);
        assert_eq!(
            problem.as_deref().map(|p| p.split(':').next().unwrap()),
            expected
        );
    }

    #[test]
    fn the_tool_signs_nothing_every_hub_would_refuse() {
        check("hub-0001", "diagnostics", "{}", 3600, Some("r-1"), None);
        check("hub-0001", "diagnostics", "{}", 3600, None, None);
        check(
            "HUB/#",
            "diagnostics",
            "{}",
            3600,
            None,
            Some("--hub \"HUB/#\" is not a hub id"),
        );
        check(
            "",
            "diagnostics",
            "{}",
            3600,
            None,
            Some("--hub \"\" is not a hub id"),
        );
        check("hub-0001", "diagnostics", "{}", 3600, Some("a/b+#"), Some("--request-id must be 1 to 128 characters without control characters, '/', '+' or '#' (it is a topic level)"));
        // Hubs of another version may take a command this one does not know; it is only warned about.
        check("hub-0001", "reboot_now", "{}", 3600, None, None);
        check(
            "hub-0001",
            "diagnostics",
            "[1,2]",
            3600,
            None,
            Some("--args must be a JSON object, such as '{}'"),
        );
        check(
            "hub-0001",
            "diagnostics",
            "{}",
            0,
            None,
            Some("--valid-for must be longer than 0s"),
        );
    }
}
