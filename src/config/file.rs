//! The first stage: the defaults, the main file, its drop-ins and the `VITALSD_<SECTION>__<KEY>` variables
//! layered with figment, so every value remembers which file or variable set it.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Num, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::{io_message, ConfigError};

/// A configuration is a few kilobytes; a larger file is generated or damaged, and parsing it whole would
/// cost memory out of proportion (a TOML table costs far more in memory than its text).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One layer: a file's table or one variable, under the name an error gives it.
pub(super) struct Layer(Metadata, Dict);

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.0.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.1.clone()))
    }
}

/// Joins a key onto a key path, quoting keys that TOML would need quoted; a long key (no key of ours has
/// more than a few words) is shown by its beginning, as a bad value is.
pub(super) fn key_path(parent: &str, key: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let key = match (1..=64).contains(&key.len()) && key.chars().all(bare) {
        true => key.to_string(),
        false => super::values::q(key),
    };
    match parent {
        "" => key,
        parent => format!("{parent}.{key}"),
    }
}

/// Parses one file's text into a layer; a syntax error is reported under `origin`, with toml's line and column.
pub(super) fn parse(text: &str, origin: &str, source: Option<&Path>) -> Result<Layer, ConfigError> {
    let dict = toml::from_str(text).map_err(|error: toml::de::Error| {
        let text = error.to_string();
        let position = text.lines().next().unwrap_or_default();
        ConfigError::new(origin, format!("{position}: {}", error.message()))
    })?;
    let metadata = match source {
        Some(path) => Metadata::from("drop-in", path),
        None => Metadata::named(origin.to_string()),
    };
    Ok(Layer(metadata, dict))
}

/// The defaults alone, the layer under all others.
pub(super) fn defaults() -> Figment {
    let defaults = parse(super::DEFAULTS, "defaults", None);
    Figment::from(defaults.unwrap_or_else(|error| panic!("the defaults are valid TOML: {error}")))
}

/// Reads `path` and then `path.d/*.toml` in lexical order, each layer merged over the ones before: tables
/// key by key, anything else (arrays included) replaced whole.
///
/// Unreadable files and syntax errors are all reported together, and end loading: validating what is left would
/// report keys as missing that are only unreadable.
///
/// `replacing` is a drop-in by file name and the text it would have: it is read instead of the file of that
/// name, or as if it were there, so a drop-in can be validated before it is written.
pub(super) fn read_files(
    path: &Path,
    replacing: Option<(&str, &str)>,
) -> Result<Figment, Vec<ConfigError>> {
    let (mut figment, mut errors) = (defaults(), Vec::new());
    let mut drop_ins = drop_in_files(path).unwrap_or_else(|error| {
        errors.push(error);
        Vec::new()
    });
    let replaced = replacing.map(|(name, text)| (drop_in_dir(path).join(name), text));
    if let Some((file, _)) = &replaced {
        if !drop_ins.contains(file) {
            drop_ins.push(file.clone());
            drop_ins.sort();
        }
    }
    let files = std::iter::once(path.to_path_buf()).chain(drop_ins);
    for (index, file) in files.enumerate() {
        let shown = file.display().to_string();
        // An unreadable main file is named by its message alone, as the command's first line names it.
        let origin = if index == 0 { "" } else { &shown };
        let unreadable =
            |problem| ConfigError::new(origin, format!("cannot read {shown}: {problem}"));
        let text = match &replaced {
            Some((replaced, text)) if *replaced == file => Ok(text.to_string()),
            _ => read_bounded(&file).map_err(unreadable),
        };
        match text.and_then(|text| parse(&text, &shown, (index > 0).then_some(&file))) {
            Ok(layer) => figment = figment.merge(layer),
            Err(error) if index == 0 => errors.insert(0, error),
            Err(error) => errors.push(error),
        }
    }
    errors.is_empty().then_some(figment).ok_or(errors)
}

/// A file's text, if it is at most `MAX_FILE_BYTES` long; reading stops there.
fn read_bounded(path: &Path) -> Result<String, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| io_message(&error))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err("larger than 1 MiB; a configuration is a few kilobytes".to_string());
    }
    String::from_utf8(bytes).map_err(|_| "stream did not contain valid UTF-8".to_string())
}

/// `path.d`, where the drop-ins of `path` are.
pub fn drop_in_dir(path: &Path) -> PathBuf {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".d");
    PathBuf::from(dir)
}

/// The drop-ins of `path`, sorted by file name; none if `path.d` does not exist.
pub(super) fn drop_in_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = drop_in_dir(path);
    let names = match std::fs::read_dir(&dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => {
            entries.and_then(|entries| entries.map(|entry| Ok(entry?.file_name())).collect())
        }
    };
    let names: Vec<_> = names.map_err(|error: io::Error| {
        let message = format!("cannot read {}: {}", dir.display(), io_message(&error));
        ConfigError::new("", message)
    })?;
    let names = names.iter().map(|name| name.to_string_lossy());
    let toml = |name: &str| name.ends_with(".toml") && !name.starts_with('.');
    let mut files: Vec<_> = names
        .filter(|name| toml(name))
        .map(|name| dir.join(&*name))
        .collect();
    files.sort();
    Ok(files)
}

/// Layers the `VITALSD_<SECTION>__<KEY>` variables among `env` over single keys of the top-level tables, as
/// text: `validate` reads it as a TOML integer, float or boolean where a key wants one. Other `VITALSD_`
/// variables, without the `__`, are left alone: `VITALSD_CONFIG` names the main file, and the test suites use
/// some.
pub(super) fn layer_env(
    mut figment: Figment,
    env: &[(String, String)],
) -> (Figment, Vec<ConfigError>) {
    let mut errors = Vec::new();
    for (variable, text) in env {
        let name = variable
            .strip_prefix("VITALSD_")
            .and_then(|name| name.split_once("__"));
        let Some((section, key)) = name else {
            if let Some(meant) = meant_variable(variable) {
                let message = format!("is not read: a variable names its section and key with two underscores, as {meant}");
                errors.push(ConfigError::new(variable.clone(), message));
            }
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let labelled = format!(
            "{}.{} (from {variable})",
            key_path("", &section),
            key_path("", &key)
        );
        let table = figment
            .find_value(&section)
            .map_or(true, |value| value.as_dict().is_some());
        let (path, problem) = match (section.as_str(), key.as_str()) {
            ("", _) | (_, "") => (variable.clone(), "expected VITALSD_<SECTION>__<KEY>"),
            ("serial", _) => (
                labelled,
                "[[serial]] entries cannot be set from the environment",
            ),
            (name, _) if !super::validate::keys_at(&[]).contains(&name) => {
                (labelled, "unknown section")
            }
            // A section that is not a table is reported by validation; there is nothing to override in it.
            _ if !table => continue,
            _ => {
                let value = Dict::from([(key, Value::from(text.as_str()))]);
                let metadata = Metadata::from("environment", Source::Custom(variable.clone()));
                figment = figment.merge(Layer(metadata, Dict::from([(section, value.into())])));
                continue;
            }
        };
        errors.push(ConfigError::new(path, problem));
    }
    (figment, errors)
}

/// The variable `variable` was meant to be when it is a section and a key of that section joined by one
/// underscore (`VITALSD_MQTT_WINDOW`): a typo that would otherwise be ignored. Other `VITALSD_` names are not
/// configuration.
fn meant_variable(variable: &str) -> Option<String> {
    let name = variable.strip_prefix("VITALSD_")?.to_ascii_lowercase();
    let sections = super::validate::keys_at(&[]);
    let (section, key) = sections.iter().find_map(|section| {
        let key = name.strip_prefix(section)?.strip_prefix('_')?;
        let keys = super::validate::keys_at(&[(section, None)]);
        keys.contains(&key).then_some((section, key))
    })?;
    Some(format!("VITALSD_{}__{}", section, key).to_ascii_uppercase())
}

/// The typed reading of a variable's text, where it looks like a TOML integer, float or boolean.
pub(super) fn env_scalar(text: &str, tag: Tag) -> Option<Value> {
    match text.parse::<toml::Value>().ok()? {
        toml::Value::Integer(number) => Some(Value::Num(tag, Num::I64(number))),
        toml::Value::Float(number) => Some(Value::Num(tag, Num::F64(number))),
        toml::Value::Boolean(flag) => Some(Value::Bool(tag, flag)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_typed_when_they_look_like_toml_scalars() {
        let cases = [
            ("45", Some(Value::from(45i64))),
            ("-3", Some(Value::from(-3i64))),
            ("1_000", Some(Value::from(1000i64))),
            ("2.5", Some(Value::from(2.5))),
            ("true", Some(Value::from(true))),
            ("false", Some(Value::from(false))),
            ("mqtt://broker:1883", None),
            ("\"quoted\"", None),
            ("[1, 2]", None),
            ("1979-05-27", None),
            ("", None),
            ("45\nx = 1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(env_scalar(text, Tag::Default), expected, "for {text:?}");
        }
    }

    #[test]
    fn key_paths_quote_keys_that_need_it() {
        assert_eq!(key_path("", "mqtt"), "mqtt");
        assert_eq!(key_path("mqtt", "keep_alive_s"), "mqtt.keep_alive_s");
        assert_eq!(key_path("mqtt", "a.b"), r#"mqtt."a.b""#);
        assert_eq!(key_path("mqtt", ""), r#"mqtt."""#);
    }
}
