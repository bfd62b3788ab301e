//! The first stage: reads the main file, its drop-ins and the environment overlay into one untyped TOML table,
//! remembering which drop-in or variable set each value so errors can name it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::validate::{SERIAL_SECTION, TABLE_SECTIONS};
use super::{io_message, ConfigError};

/// Environment overrides are `VITALSD_<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "VITALSD_";
const ENV_SEPARATOR: &str = "__";
/// Names the main file (read by the command line), so it is not an override.
const ENV_CONFIG_PATH: &str = "VITALSD_CONFIG";

/// The merged table and where its values came from.
#[derive(Debug, Default)]
pub(super) struct Layers {
    pub(super) table: Table,
    pub(super) sources: Sources,
}

impl Layers {
    /// A configuration made of one file only.
    pub(super) fn from_main(table: Table) -> Layers {
        Layers {
            table,
            sources: Sources::default(),
        }
    }
}

/// Where a value that did not come from the main file came from.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    DropIn(PathBuf),
    /// `text` is the variable's value before it was read as a TOML integer, float or boolean.
    Env {
        variable: String,
        text: String,
    },
}

/// The origins of values set by drop-ins and variables, by key path (`mqtt.url`, `serial`).
#[derive(Debug, Default)]
pub(super) struct Sources {
    origins: BTreeMap<String, Origin>,
}

impl Sources {
    fn set(&mut self, path: &str, origin: Origin) {
        self.forget(path);
        self.origins.insert(path.to_string(), origin);
    }

    /// Drops the origins of `path` and of everything inside it, when a later layer replaces it.
    fn forget(&mut self, path: &str) {
        let table_prefix = format!("{path}.");
        let array_prefix = format!("{path}[");
        self.origins.retain(|key, _| {
            key != path && !key.starts_with(&table_prefix) && !key.starts_with(&array_prefix)
        });
    }

    /// The origin of the value at `path`, or of the array or table holding it.
    fn origin(&self, path: &str) -> Option<&Origin> {
        let mut current = path;
        loop {
            if let Some(origin) = self.origins.get(current) {
                return Some(origin);
            }
            current = &current[..current.rfind(['.', '['])?];
        }
    }

    /// `path` as an error shows it: with the drop-in or variable that set it, if one did.
    pub(super) fn label(&self, path: &str) -> String {
        match self.origin(path) {
            None => path.to_string(),
            Some(Origin::DropIn(file)) => format!("{path} (from {})", file.display()),
            Some(Origin::Env { variable, .. }) => format!("{path} (from {variable})"),
        }
    }

    /// The text of the variable that set exactly `path`, so a string key may hold `1234` or `true`.
    pub(super) fn env_text(&self, path: &str) -> Option<&str> {
        match self.origins.get(path) {
            Some(Origin::Env { text, .. }) => Some(text),
            _ => None,
        }
    }
}

/// Joins a key onto a key path, quoting keys that TOML would need quoted.
pub(super) fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Parses one file's text; a syntax error is reported under `origin` with its line and column.
pub(super) fn parse(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|error| {
        let position = match error.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before
                    .rsplit('\n')
                    .next()
                    .map_or(0, |last| last.chars().count())
                    + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        ConfigError::new(
            origin,
            format!("TOML syntax error{position}: {}", error.message()),
        )
    })
}

/// Reads `path` and then `path.d/*.toml` in lexical order, each layer merged over the ones before.
///
/// Unreadable files and syntax errors are all reported together, and end loading: validating what is left would
/// report keys as missing that are only unreadable.
pub(super) fn read_files(path: &Path) -> Result<Layers, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let main = read_one(path, "");
    let drop_ins = drop_in_files(path).unwrap_or_else(|error| {
        errors.push(error);
        Vec::new()
    });
    let mut layers = match main {
        Ok(table) => Some(Layers::from_main(table)),
        Err(error) => {
            errors.insert(0, error);
            None
        }
    };
    for drop_in in drop_ins {
        match read_one(&drop_in, &drop_in.display().to_string()) {
            Ok(overlay) => {
                if let Some(layers) = &mut layers {
                    merge(
                        &mut layers.table,
                        overlay,
                        "",
                        &Origin::DropIn(drop_in),
                        &mut layers.sources,
                    );
                }
            }
            Err(error) => errors.push(error),
        }
    }
    match layers {
        Some(layers) if errors.is_empty() => Ok(layers),
        _ => Err(errors),
    }
}

/// Reads and parses one file; `unreadable_path` is the error path if it cannot be read.
fn read_one(path: &Path, unreadable_path: &str) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(
            unreadable_path,
            format!("cannot read {}: {}", path.display(), io_message(&error)),
        )
    })?;
    parse(&text, &path.display().to_string())
}

/// The drop-ins of `path`, sorted by file name; none if `path.d` does not exist.
fn drop_in_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let unreadable = |error: std::io::Error| {
        ConfigError::new(
            "",
            format!("cannot read {}: {}", dir.display(), io_message(&error)),
        )
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(unreadable(error)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let name = entry.map_err(unreadable)?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".toml") && !name.starts_with('.') {
            files.push(dir.join(&*name));
        }
    }
    files.sort();
    Ok(files)
}

/// Merges `overlay` into `base`: tables key by key, anything else (arrays included) replaced whole.
fn merge(base: &mut Table, overlay: Table, parent: &str, origin: &Origin, sources: &mut Sources) {
    for (key, value) in overlay {
        let path = key_path(parent, &key);
        match value {
            Value::Table(incoming) => {
                let slot = base
                    .entry(key)
                    .or_insert_with(|| Value::Table(Table::new()));
                if !slot.is_table() {
                    *slot = Value::Table(Table::new());
                    sources.forget(&path);
                }
                if let Value::Table(existing) = slot {
                    merge(existing, incoming, &path, origin, sources);
                }
            }
            value => {
                sources.set(&path, origin.clone());
                base.insert(key, value);
            }
        }
    }
}

/// Applies the `VITALSD_<SECTION>__<KEY>` variables among `env` to single keys of the top-level tables.
///
/// A value that parses as a TOML integer, float or boolean is taken as one, anything else as a string.
/// Other `VITALSD_` variables without the `__` separator are left alone: the test suites use some.
pub(super) fn apply_env(layers: &mut Layers, env: &[(String, String)]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (variable, text) in env {
        if variable == ENV_CONFIG_PATH {
            continue;
        }
        let Some((section, key)) = variable
            .strip_prefix(ENV_PREFIX)
            .and_then(|rest| rest.split_once(ENV_SEPARATOR))
        else {
            continue;
        };
        if section.is_empty() || key.is_empty() {
            errors.push(ConfigError::new(
                variable,
                "expected VITALSD_<SECTION>__<KEY>",
            ));
            continue;
        }
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let path = key_path(&key_path("", &section), &key);
        let labelled = format!("{path} (from {variable})");
        if section == SERIAL_SECTION {
            errors.push(ConfigError::new(
                labelled,
                "[[serial]] entries cannot be set from the environment",
            ));
            continue;
        }
        if !TABLE_SECTIONS.contains(&section.as_str()) {
            errors.push(ConfigError::new(labelled, "unknown section"));
            continue;
        }
        // A section that is not a table is reported by validation; there is nothing to override in it.
        let Value::Table(table) = layers
            .table
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()))
        else {
            continue;
        };
        table.insert(key, env_value(text));
        layers.sources.set(
            &path,
            Origin::Env {
                variable: variable.clone(),
                text: text.clone(),
            },
        );
    }
    errors
}

fn env_value(text: &str) -> Value {
    match text.parse::<Value>() {
        Ok(value @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_))) => value,
        _ => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_typed_when_they_look_like_toml_scalars() {
        let cases = [
            ("45", Value::Integer(45)),
            ("-3", Value::Integer(-3)),
            ("1_000", Value::Integer(1000)),
            ("2.5", Value::Float(2.5)),
            ("true", Value::Boolean(true)),
            ("false", Value::Boolean(false)),
            (
                "mqtt://broker:1883",
                Value::String("mqtt://broker:1883".into()),
            ),
            ("\"quoted\"", Value::String("\"quoted\"".into())),
            ("[1, 2]", Value::String("[1, 2]".into())),
            ("1979-05-27", Value::String("1979-05-27".into())),
            ("", Value::String(String::new())),
            ("45\nx = 1", Value::String("45\nx = 1".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(env_value(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn key_paths_quote_keys_that_need_it() {
        assert_eq!(key_path("", "mqtt"), "mqtt");
        assert_eq!(key_path("mqtt", "keep_alive_s"), "mqtt.keep_alive_s");
        assert_eq!(key_path("mqtt", "a.b"), r#"mqtt."a.b""#);
        assert_eq!(key_path("mqtt", ""), r#"mqtt."""#);
    }

    #[test]
    fn a_later_layer_replaces_origins_inside_what_it_replaces() {
        let mut sources = Sources::default();
        let first = Origin::DropIn("/10.toml".into());
        sources.set("serial", first.clone());
        assert_eq!(sources.origin("serial[2].path"), Some(&first));
        assert_eq!(
            sources.label("serial[2].path"),
            "serial[2].path (from /10.toml)"
        );
        sources.set("mqtt.url", first.clone());
        sources.forget("mqtt");
        assert_eq!(sources.origin("mqtt.url"), None);
        assert_eq!(sources.label("mqtt.url"), "mqtt.url");
    }

    #[test]
    fn merging_replaces_arrays_and_scalars_and_merges_tables() {
        let mut base = parse(
            "[mqtt]\nurl = \"a\"\nwindow = 1\n[[serial]]\npath = \"/a\"\n",
            "base",
        )
        .expect("base");
        let overlay =
            parse("[mqtt]\nwindow = 2\n[[serial]]\npath = \"/b\"\n", "overlay").expect("overlay");
        let mut sources = Sources::default();
        merge(
            &mut base,
            overlay,
            "",
            &Origin::DropIn("/o.toml".into()),
            &mut sources,
        );
        let expected = parse(
            "[mqtt]\nurl = \"a\"\nwindow = 2\n[[serial]]\npath = \"/b\"\n",
            "expected",
        )
        .expect("expected");
        assert_eq!(base, expected);
        assert_eq!(sources.label("mqtt.url"), "mqtt.url");
        assert_eq!(sources.label("mqtt.window"), "mqtt.window (from /o.toml)");
        assert_eq!(
            sources.label("serial[0].path"),
            "serial[0].path (from /o.toml)"
        );
    }
}
