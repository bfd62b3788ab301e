//! Turns the hardware-in-the-loop variables into cfgs, so the `hil` suite's hardware tests are compiled as
//! ignored ("skipped: set …") when no device is named, and run when one is: libtest has no run-time skip,
//! and a test that returns early would count as passed. Also gives `vitalsd --version` the git revision.

/// A variable, and the value it must have (`None`: any non-empty value).
type Wanted = (&'static str, Option<&'static str>);

/// Each cfg, and the variables that must all be set for it.
const HARDWARE: &[(&str, &[Wanted])] = &[
    ("vitalsd_hil_serial", &[("VITALSD_HIL_SERIAL_PATH", None)]),
    (
        "vitalsd_hil_serial_replug",
        &[
            ("VITALSD_HIL_SERIAL_PATH", None),
            ("VITALSD_HIL_REPLUG", Some("1")),
        ],
    ),
    (
        "vitalsd_hil_contec",
        &[
            ("VITALSD_HIL_SERIAL_PATH", None),
            ("VITALSD_HIL_SERIAL_PROTOCOL", Some("contec-cms50")),
        ],
    ),
    (
        "vitalsd_hil_serial_pair",
        &[
            ("VITALSD_HIL_SERIAL_PATH", None),
            ("VITALSD_HIL_SERIAL_PATH_2", None),
            ("VITALSD_HIL_SERIAL_PROTOCOL_2", None),
        ],
    ),
    (
        "vitalsd_hil_ble",
        &[
            ("VITALSD_HIL_BLE_ADAPTER", None),
            ("VITALSD_HIL_BLE_ADDRESS", None),
        ],
    ),
];

fn main() {
    git_revision();
    for (cfg, variables) in HARDWARE {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let set = variables.iter().all(|(name, wanted)| {
            println!("cargo::rerun-if-env-changed={name}");
            match (std::env::var(name), wanted) {
                (Ok(value), None) => !value.is_empty(),
                (Ok(value), Some(wanted)) => value == *wanted,
                (Err(_), _) => false,
            }
        });
        if set {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

/// Sets VITALSD_GIT_REVISION for `vitalsd --version`: the variable's own value when set (scripts/package
/// passes it, since its build root has no git), else git's short commit id when the crate is the top of a
/// git work tree, else "unknown" (a build from a source tarball).
fn git_revision() {
    println!("cargo::rerun-if-env-changed=VITALSD_GIT_REVISION");
    let revision = match std::env::var("VITALSD_GIT_REVISION") {
        Ok(revision) if !revision.is_empty() => revision,
        _ => revision_from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo::rustc-env=VITALSD_GIT_REVISION={revision}");
}

fn revision_from_git() -> Option<String> {
    // A tarball unpacked inside some other repository must not take that repository's revision.
    let top = std::path::PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    if top.canonicalize().ok()? != manifest_dir.canonicalize().ok()? {
        return None;
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Run again when HEAD moves: a commit, a checkout, a branch switch (the ref may be loose or packed).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo::rerun-if-changed={path}");
            }
        }
    }
    Some(revision)
}

/// A git command's trimmed output, if it succeeded and printed something.
fn git(args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}
