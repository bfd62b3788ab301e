//! The AsyncAPI document `schema/asyncapi.yaml` is valid AsyncAPI 3 by a real parser (`@asyncapi/parser`,
//! run by `schema/check/check.mjs` under Node.js), names every topic of the hub, and gives each message the
//! JSON Schema file the scenarios validate the hub's real messages against.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Installs the parser once (npm ci, from the lock file) and runs the check on `document`.
fn check(document: &Path) -> std::process::Output {
    let dir = Path::new(REPO).join("schema/check");
    for tool in ["node", "npm"] {
        let found = Command::new(tool).arg("--version").output();
        assert!(
            found.is_ok_and(|output| output.status.success()),
            "{tool} is not installed; .ci/run installs Node.js (Debian's nodejs and npm)"
        );
    }
    // The two tests would otherwise install into the same directory at once.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !dir.join("node_modules/@asyncapi/parser").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir)
            .status()
            .expect("npm ci");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    Command::new("node")
        .arg(dir.join("check.mjs"))
        .arg(document)
        .output()
        .expect("node")
}

#[test]
fn the_asyncapi_document_parses_and_describes_every_topic_with_the_tests_json_schemas() {
    let output = check(&Path::new(REPO).join("schema/asyncapi.yaml"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the AsyncAPI parser refused schema/asyncapi.yaml:\n{}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        found,
        [
            "{topic_prefix}/{hub_id}/readings/{kind} vitalsd.reading.v1",
            "{topic_prefix}/{hub_id}/fhir/{kind} fhir.r4.bundle",
            "{topic_prefix}/{hub_id}/status vitalsd.status.v1",
            "{topic_prefix}/{hub_id}/twin vitalsd.twin.v1",
            "{topic_prefix}/{hub_id}/events vitalsd.event.v1",
            "{topic_prefix}/{hub_id}/cmd/{request_id} vitalsd.command-envelope.v1",
            "{topic_prefix}/{hub_id}/cmd/{request_id}/state vitalsd.command-state.v1",
            "{topic_prefix}/{hub_id}/diagnostics/{request_id} vitalsd.diagnostics.v1",
        ]
    );
    // Every schema file named there is one the scenarios validate against, and compiles.
    for line in found {
        let id = line.rsplit(' ').next().unwrap();
        let path = Path::new(REPO).join(format!("schema/{id}.schema.json"));
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(schema["$id"], id);
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
}

#[test]
fn the_check_refuses_a_document_that_is_not_valid_asyncapi() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(Path::new(REPO).join("schema")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(Path::new(REPO).join("schema/asyncapi.yaml")).unwrap();
    // AsyncAPI 2's verb, which version 3 does not know.
    let broken = text.replacen("action: send", "action: publish", 1);
    assert_ne!(broken, text);
    std::fs::write(dir.path().join("asyncapi.yaml"), broken).unwrap();
    let output = check(&dir.path().join("asyncapi.yaml"));
    assert!(
        !output.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("action"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
