//! `vitalsd generate-docs DIR` (hidden): the man pages and shell completions the Debian package ships,
//! generated from the binary's own clap definitions so they cannot drift from the options it accepts.

use std::path::Path;
use std::process::ExitCode;

use clap_complete::Shell;

/// Writes `DIR/man/vitalsd.1` and one page per visible subcommand (`vitalsd-run.1`, …), and
/// `DIR/completions/` for bash (`vitalsd`), zsh (`_vitalsd`) and fish (`vitalsd.fish`), the names each
/// shell's completion directory expects.
pub fn generate_docs(command: clap::Command, dir: &Path) -> ExitCode {
    match write_docs(command, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot write into {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn write_docs(mut command: clap::Command, dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(command.clone(), &man)?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        (Shell::Bash, "vitalsd"),
        (Shell::Zsh, "_vitalsd"),
        (Shell::Fish, "vitalsd.fish"),
    ] {
        let mut out = std::fs::File::create(completions.join(file))?;
        clap_complete::generate(shell, &mut command, "vitalsd", &mut out);
    }
    Ok(())
}
