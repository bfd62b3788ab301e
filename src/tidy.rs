//! Architecture checks that run as tests: the boundaries ARCHITECTURE.md states, enforced mechanically.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The text of a file without its `#[cfg(test)]` items, so tests may use what production code may not.
fn production_text(path: &Path) -> String {
    without_test_items(&std::fs::read_to_string(path).expect("read source"))
}

/// `text` without each item marked `#[cfg(test)]`: a `mod name;` line, or an item up to the brace that
/// closes it. Production code may follow a test item (as in `outbox/mod.rs`), so the text is not simply
/// cut at the first one. Braces are counted without regard to strings; an item whose braces never balance
/// takes the rest of the file, which errs towards checking less only in test code.
fn without_test_items(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut kept = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        kept.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let end = match (item.find(';'), item.find('{')) {
            (Some(semicolon), brace) if brace.is_none_or(|brace| semicolon < brace) => {
                semicolon + 1
            }
            (_, Some(open)) => {
                let mut depth = 0usize;
                let closing = item[open..].char_indices().find_map(|(index, c)| {
                    depth = match c {
                        '{' => depth + 1,
                        '}' => depth - 1,
                        _ => return None,
                    };
                    (depth == 0).then_some(open + index + 1)
                });
                closing.unwrap_or(item.len())
            }
            _ => item.len(),
        };
        rest = &item[end..];
    }
    kept.push_str(rest);
    kept
}

#[test]
fn test_items_are_left_out_of_production_text() {
    let cases = [
        ("a\n#[cfg(test)]\nmod tests { fn f() { x } }\n", "a\n\n"),
        ("a\n#[cfg(test)]\nmod damage_tests;\nb\n", "a\n\nb\n"),
        (
            "#[cfg(test)]\nfn f() -> u8 { 1 }\nb #[cfg(test)] mod t;",
            "\nb ",
        ),
        ("a\n#[cfg(test)]\nmod tests { {", "a\n"),
        ("no tests", "no tests"),
    ];
    for (text, expected) in cases {
        assert_eq!(without_test_items(text), expected, "for {text:?}");
    }
}

#[track_caller]
fn check_absent(files: &[&str], forbidden: &[&str]) {
    let mut violations = Vec::new();
    for file in files {
        let path = src().join(file);
        let paths = if path.is_dir() {
            sources(&path)
        } else {
            vec![path]
        };
        for path in paths {
            let text = production_text(&path);
            for word in forbidden {
                if text.contains(word) {
                    violations.push(format!("{} mentions {word}", path.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The sans-IO modules: decoders and their dialogs (`decode/`, with the glucose record dialog and the
/// clock sync), the protocol catalogue, the model, the time model, the pipeline's `Decoding`, the
/// Bluetooth profile table and session core, and the uplink's bookkeeping. None of them is `async`, touches a file, socket or thread, or reads a clock.
#[test]
fn decoders_and_the_model_do_no_io_and_read_no_clock() {
    check_absent(
        &[
            "decode",
            "catalog.rs",
            "model/reading.rs",
            "model/codes.rs",
            "spot.rs",
            "model/payload.rs",
            "model/fhir.rs",
            "model/fhir_codes.rs",
            "model/measurement_time.rs",
            "pipeline.rs",
            "ble/profile.rs",
            "ble/session_core.rs",
            "mqtt/inflight.rs",
            "mqtt/refusal.rs",
        ],
        &[
            "tokio",
            "std::fs",
            // `fs::` and `thread::` also catch the paths imported as `use std::{fs, thread}`.
            "fs::",
            "std::net",
            "std::thread",
            "thread::",
            "Instant::now",
            "SystemTime::now",
            "Utc::now",
            "Local::now",
            "clock::hub_now",
            "clock::hub_clock",
            "clock::now_utc",
            "clock::now_local",
            "async fn",
            "btleplug",
            "tokio_serial",
            "rusqlite",
            "crate::outbox::worker",
        ],
    );
}

#[test]
fn the_outbox_knows_nothing_of_mqtt_devices_or_json() {
    check_absent(
        &["outbox"],
        &[
            "rumqttc",
            "crate::mqtt",
            "crate::serial",
            "crate::decode",
            "crate::model::reading",
            "serde_json",
        ],
    );
}

#[test]
fn only_the_clock_module_reads_the_clock() {
    let mut violations = Vec::new();
    for path in sources(&src()) {
        if path.ends_with("clock.rs") || path.ends_with("tidy.rs") {
            continue;
        }
        let text = production_text(&path);
        for word in [
            "Utc::now",
            "Local::now",
            "SystemTime::now",
            "libc::adjtimex",
            "libc::CLOCK_BOOTTIME",
            "random/boot_id",
        ] {
            if text.contains(word) {
                violations.push(format!("{} calls {word}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The time model's rules live in one place: no other module holds a year limit, compares a device
/// year, or keeps its own "ahead" or tolerance window.
#[test]
fn only_the_time_model_judges_device_clocks() {
    let mut violations = Vec::new();
    for path in sources(&src()) {
        if ["measurement_time.rs", "model/clocks.rs", "tidy.rs"]
            .iter()
            .any(|allowed| path.ends_with(allowed))
        {
            continue;
        }
        let text = production_text(&path);
        for word in [
            "2010",
            "2099",
            "Datelike::year",
            "TimeDelta::minutes(10)",
            "TimeDelta::minutes(2)",
        ] {
            if text.contains(word) {
                violations.push(format!("{} holds {word}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Tasks and threads start in `app` (the daemon's wiring) and in the commands (`vitalsd run` spawns its
/// signal handler, `vitalsd pair` a thread reading the passkey from stdin); the one other thread is the
/// outbox worker's, which owns the SQLite connection so that storage waits never block the runtime.
#[test]
fn only_app_and_the_commands_spawn_tasks_and_threads() {
    let allowed = [
        "app.rs",
        "cli/run.rs",
        "cli/ble.rs",
        "outbox/worker.rs",
        "tidy.rs",
    ];
    let mut violations = Vec::new();
    for path in sources(&src()) {
        if allowed.iter().any(|allowed| path.ends_with(allowed)) {
            continue;
        }
        let text = production_text(&path);
        for spawn in [
            "tokio::spawn",
            "thread::spawn",
            "thread::Builder",
            "spawn_blocking",
        ] {
            if text.contains(spawn) {
                violations.push(format!("{} uses {spawn}", path.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "spawned outside app and the commands: {violations:?}"
    );
}

/// The words of log events above debug level, without their string literals but with the names those
/// interpolate (`{passkey}`): the fields and values they log.
fn logged_above_debug(text: &str) -> Vec<String> {
    let mut events = Vec::new();
    for macro_name in ["tracing::info!(", "tracing::warn!(", "tracing::error!("] {
        for (at, _) in text.match_indices(macro_name) {
            let mut depth = 0usize;
            let (mut in_string, mut escaped) = (false, false);
            // Inside the `{…}` of a string literal: the name it interpolates, logged like a field.
            let mut placeholder: Option<String> = None;
            let mut code = String::new();
            for c in text[at + macro_name.len() - 1..].chars() {
                if in_string {
                    if let Some(name) = placeholder.as_mut() {
                        if c.is_alphanumeric() || c == '_' {
                            name.push(c);
                            continue;
                        }
                        code.push_str(&format!(" {name} "));
                        placeholder = None;
                    }
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => in_string = false,
                        (false, '{') => placeholder = Some(String::new()),
                        _ => {}
                    }
                    continue;
                }
                match c {
                    '"' => in_string = true,
                    '(' => depth += 1,
                    ')' if depth == 1 => break,
                    ')' => depth -= 1,
                    other => code.push(other),
                }
            }
            events.push(code);
        }
    }
    events
}

/// Pairing secrets and passwords reach the log only at debug level (README, Security), so no info, warn or
/// error event names them as a field or value.
#[test]
fn secrets_are_never_logged_above_debug() {
    let secret = |word: &str| ["passkey", "pincode", "password", "secret"].contains(&word);
    let mut violations = Vec::new();
    for path in sources(&src()) {
        for event in logged_above_debug(&production_text(&path)) {
            let words = event.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            if let Some(word) = words.map(str::to_ascii_lowercase).find(|w| secret(w)) {
                violations.push(format!("{}: {word} in {event:?}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
    let cases = [
        (
            r#"tracing::info!(device, %pincode, "PIN (to enter).");"#,
            vec!["device, %pincode, "],
        ),
        (
            r#"tracing::warn!("No passkey \" entered", n = f(x));"#,
            vec![", n = fx"],
        ),
        (r#"tracing::debug!(passkey, "shown");"#, vec![]),
        (
            r#"tracing::error!("PIN {pincode:?} {{x}}");"#,
            vec![" pincode    x "],
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(logged_above_debug(text), expected, "for {text}");
    }
}

#[test]
fn every_module_says_what_it_owns() {
    let missing: Vec<String> = sources(&src())
        .into_iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//! "))
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

/// The top-level modules in the order ARCHITECTURE.md's codemap lists them: each entry line starts with
/// `- ` and one or more backquoted names (`state::devices` counts for `state`).
fn codemap_order() -> Vec<String> {
    let top = |name: &str| name.split("::").next().unwrap_or(name).to_string();
    let mut order: Vec<String> = Vec::new();
    for name in codemap_entries() {
        if !order.contains(&top(&name)) {
            order.push(top(&name));
        }
    }
    order
}

/// Every name the codemap's entry lines start with, in order, as written (`model`, `model::reading`, …).
fn codemap_entries() -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("read ARCHITECTURE.md");
    let codemap = text
        .split("\n## Codemap")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("ARCHITECTURE.md has a Codemap section");
    let mut entries = Vec::new();
    for line in codemap
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- `"))
    {
        let names = line.split("`:").next().unwrap_or_default();
        entries.extend(
            names
                .split(", ")
                .map(|name| name.trim_matches('`').to_string()),
        );
    }
    entries
}

/// The crate's top-level modules, from the files and folders under `src/`.
fn top_level_modules() -> Vec<String> {
    let mut modules: Vec<String> = std::fs::read_dir(src())
        .expect("read src")
        .map(|entry| entry.expect("dir entry").path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_string_lossy().to_string();
            (path.is_dir() || path.extension().is_some_and(|e| e == "rs")).then_some(name)
        })
        .filter(|name| !["lib", "main", "tidy"].contains(&name.as_str()))
        .collect();
    modules.sort();
    modules.dedup();
    modules
}

#[test]
fn the_codemap_names_every_module_and_nothing_else() {
    let mut listed = codemap_order();
    listed.sort();
    assert_eq!(listed, top_level_modules());
}

/// Every `crate::x` a module's production code names is a module listed above it in the codemap: the
/// layering ARCHITECTURE.md states is the one the code has.
#[test]
fn modules_use_only_modules_above_them_in_the_codemap() {
    let order = codemap_order();
    let entries = codemap_entries();
    let rank = |name: &str| order.iter().position(|listed| listed == name);
    let mut violations = Vec::new();
    for path in sources(&src()) {
        let relative = path.strip_prefix(src()).expect("under src");
        let module = relative
            .components()
            .next()
            .map(|first| {
                first
                    .as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .expect("a file");
        if ["lib", "main", "tidy"].contains(&module.as_str()) {
            continue;
        }
        let Some(own) = rank(&module) else { continue };
        // Comments may point anywhere; only code makes an edge.
        let text: String = production_text(&path)
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // The submodule this file belongs to (`reading` for `model/reading.rs`), for edges inside `module`.
        let own_sub = relative.components().nth(1).map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        });
        for (at, _) in text.match_indices("crate::") {
            let path: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut segments = path.split("::");
            let used = segments.next().unwrap_or_default().to_string();
            if used == module {
                // Inside a module, its submodules the codemap lists follow the same rule among themselves.
                let sub_rank = |sub: &str| {
                    entries
                        .iter()
                        .position(|e| *e == format!("{module}::{sub}"))
                };
                let (Some(own_sub), Some(used_sub)) = (&own_sub, segments.next()) else {
                    continue;
                };
                match (sub_rank(own_sub), sub_rank(used_sub)) {
                    (Some(own), Some(theirs)) if theirs > own => violations.push(format!(
                        "{} uses crate::{module}::{used_sub}",
                        relative.display()
                    )),
                    _ => {}
                }
                continue;
            }
            if used.is_empty() {
                continue;
            }
            match rank(&used) {
                Some(theirs) if theirs < own => {}
                _ => violations.push(format!("{} uses crate::{used}", relative.display())),
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "{violations:#?}");
}
