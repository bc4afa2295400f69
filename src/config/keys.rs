//! The configuration keys: every key the TOML file takes, also as a flag `--section-key` and an
//! environment variable `DEPLOYD_SECTION_KEY` (DESIGN.md, "Conventions").
//!
//! The key list is derived from the `File*` structs through serde (the derived `Deserialize`
//! names every field), so adding an `Option` field to a `File*` struct is all it takes for its
//! flag and variable to exist. Flag and variable values are turned into TOML values and
//! overlaid onto the file's tree before it is deserialised, so they go through exactly the same
//! parsing, `deny_unknown_fields` and checks as the file.
//!
//! This module knows key names and value syntax only: what a key means and its default live in
//! `config`.

use std::cell::RefCell;
use std::sync::OnceLock;

use clap::builder::TypedValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};
use serde::de::{self, value::Error as DeError, DeserializeSeed, IntoDeserializer, MapAccess};
use serde::Deserialize;

use super::FileConfig;

/// The prefix of every key's environment variable.
const ENV_PREFIX: &str = "DEPLOYD_";

/// The `--help` heading the key flags are listed under.
const HELP_HEADING: &str = "Configuration keys (TOML file; flags and environment win over it)";

/// Older spellings kept working: `(key path, flag alias, environment alias)`.
const ALIASES: &[(&str, &str, &str)] = &[
    ("data_dir", "data", "DEPLOYD_DATA"),
    (
        "executor.allow_private_sources",
        "allow-private-sources",
        "DEPLOYD_ALLOW_PRIVATE_SOURCES",
    ),
];

/// What a key's value looks like, as serde asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Integer,
    Float,
    String,
    /// A list: given as a TOML array (`["a","b"]`) or comma-separated strings.
    List,
    /// Anything else: read as a TOML value, or as a string when it is not one.
    Other,
}

/// One key of the TOML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The `[section]` it sits in; `None` for top-level keys.
    pub section: Option<&'static str>,
    pub name: &'static str,
    pub kind: Kind,
}

impl Key {
    /// `section.name` (or `name` at the top level), as in error messages.
    pub fn path(&self) -> String {
        match self.section {
            Some(section) => format!("{section}.{}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// The long flag without its dashes: `stream-ping-interval-secs`.
    pub fn flag(&self) -> String {
        self.path().replace(['.', '_'], "-")
    }

    /// The environment variable: `DEPLOYD_STREAM_PING_INTERVAL_SECS`.
    pub fn env(&self) -> String {
        format!(
            "{ENV_PREFIX}{}",
            self.path().replace('.', "_").to_ascii_uppercase()
        )
    }

    fn alias(&self) -> Option<(&'static str, &'static str)> {
        let path = self.path();
        ALIASES
            .iter()
            .find(|(p, _, _)| *p == path)
            .map(|(_, flag, env)| (*flag, *env))
    }

    /// Turns a flag or environment value into the TOML value the file would hold.
    pub fn parse(&self, raw: &str) -> Result<toml::Value, String> {
        let raw_trimmed = raw.trim();
        match self.kind {
            Kind::Bool => match raw_trimmed.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
                "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
                _ => Err(format!("{raw:?} is not a boolean (true or false)")),
            },
            Kind::Integer => raw_trimmed
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| format!("{raw:?} is not an integer")),
            Kind::Float => raw_trimmed
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| format!("{raw:?} is not a number")),
            Kind::String => Ok(toml::Value::String(raw.to_owned())),
            Kind::List if raw_trimmed.starts_with('[') => {
                toml_value(raw_trimmed).ok_or_else(|| format!("{raw:?} is not a TOML array"))
            }
            Kind::List => Ok(toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )),
            Kind::Other => {
                Ok(toml_value(raw_trimmed).unwrap_or_else(|| toml::Value::String(raw.to_owned())))
            }
        }
    }
}

fn toml_value(raw: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    table.get("v").cloned()
}

/// Every key of [`FileConfig`], in the structs' field order.
///
/// Invariant (tested): every field of a `File*` struct is an `Option` or a nested section
/// struct, and sections are one level deep, so the walk below never fails.
pub fn all() -> &'static [Key] {
    static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS.get_or_init(|| discover().unwrap_or_default())
}

/// Walks `FileConfig`'s derived `Deserialize`: once to learn the keys, then once per key to
/// learn what type it asks for (the probe stops that walk with an error on purpose).
pub(crate) fn discover() -> Result<Vec<Key>, String> {
    let found = RefCell::new(Vec::new());
    FileConfig::deserialize(Walker {
        found: &found,
        section: None,
        only: None,
    })
    .map_err(|e| e.to_string())?;
    let mut keys = found.into_inner();
    for key in &mut keys {
        let probed = RefCell::new(Vec::new());
        // Ends with the probe's error once the kind is known.
        let _ = FileConfig::deserialize(Walker {
            found: &probed,
            section: None,
            only: Some((key.section, key.name)),
        });
        if let Some(k) = probed.into_inner().pop() {
            key.kind = k.kind;
        }
    }
    Ok(keys)
}

/// A deserializer standing for one struct (the file or a section) whose map holds every field
/// (or, when `only` is set, just the path to one key).
struct Walker<'a> {
    found: &'a RefCell<Vec<Key>>,
    section: Option<&'static str>,
    only: Option<(Option<&'static str>, &'static str)>,
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = DeError;

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let only = self.only;
        let section = self.section;
        let fields: Vec<&'static str> = fields
            .iter()
            .copied()
            .filter(|field| match only {
                None => true,
                Some((None, name)) => *field == name,
                Some((Some(want), name)) => match section {
                    None => *field == want,
                    Some(_) => *field == name,
                },
            })
            .collect();
        visitor.visit_map(Fields {
            walker: self,
            fields: fields.into_iter(),
            current: None,
        })
    }

    fn deserialize_any<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(de::Error::custom("the configuration must be a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

struct Fields<'a> {
    walker: Walker<'a>,
    fields: std::vec::IntoIter<&'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let name = self
            .current
            .ok_or_else(|| de::Error::custom("value before key"))?;
        seed.deserialize(FieldValue {
            walker: &self.walker,
            name,
        })
    }
}

/// The value of one field: a section (a struct) or a key (an `Option`).
struct FieldValue<'a, 'b> {
    walker: &'b Walker<'a>,
    name: &'static str,
}

impl<'de> de::Deserializer<'de> for FieldValue<'_, '_> {
    type Error = DeError;

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let key = Key {
            section: self.walker.section,
            name: self.name,
            kind: Kind::Other,
        };
        if self.walker.only.is_some() {
            return visitor.visit_some(Probe {
                found: self.walker.found,
                key,
            });
        }
        self.walker.found.borrow_mut().push(key);
        visitor.visit_none()
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if self.walker.section.is_some() {
            return Err(de::Error::custom(format!(
                "[{}] {}: sections are one level deep",
                self.walker.section.unwrap_or_default(),
                self.name
            )));
        }
        Walker {
            found: self.walker.found,
            section: Some(self.name),
            only: self.walker.only,
        }
        .deserialize_struct(name, fields, visitor)
    }

    fn deserialize_any<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(de::Error::custom(format!(
            "config field {:?} must be an Option or a section struct",
            self.name
        )))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Records the type serde asks for, then stops the walk.
struct Probe<'a> {
    found: &'a RefCell<Vec<Key>>,
    key: Key,
}

impl Probe<'_> {
    fn record<T>(self, kind: Kind) -> Result<T, DeError> {
        self.found.borrow_mut().push(Key { kind, ..self.key });
        Err(de::Error::custom("probed"))
    }
}

macro_rules! probe_as {
    ($kind:expr => $($method:ident)*) => {
        $(fn $method<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
            self.record($kind)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = DeError;

    probe_as!(Kind::Bool => deserialize_bool);
    probe_as!(Kind::Integer => deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128);
    probe_as!(Kind::Float => deserialize_f32 deserialize_f64);
    probe_as!(Kind::String => deserialize_char deserialize_str deserialize_string);
    probe_as!(Kind::List => deserialize_seq);
    // An enum key is written as its variant's name, as in the file (`log_format = "json"`).
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, DeError> {
        self.record(Kind::String)
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_any<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        self.record(Kind::Other)
    }

    serde::forward_to_deserialize_any! {
        bytes byte_buf option unit unit_struct tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// The key values given as flags or environment variables, to overlay onto the file.
#[derive(Debug, Clone, Default)]
pub struct KeyFlags {
    pub values: Vec<(Key, toml::Value)>,
}

impl KeyFlags {
    /// Sets each value in `tree` (the file's top-level table), creating sections as needed.
    pub fn overlay(&self, tree: &mut toml::Table) {
        for (key, value) in &self.values {
            let table = match key.section {
                None => &mut *tree,
                Some(section) => {
                    let entry = tree
                        .entry(section)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if !entry.is_table() {
                        // The file has `section = …` where a section belongs: replacing it
                        // lets the flag win, as it should.
                        *entry = toml::Value::Table(toml::Table::new());
                    }
                    match entry.as_table_mut() {
                        Some(table) => table,
                        None => continue,
                    }
                }
            };
            table.insert(key.name.to_owned(), value.clone());
        }
    }

    /// The flag or variable that set the key at `path`, if one did (for error messages).
    pub fn origin(&self, path: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(key, _)| key.path() == path)
            .map(|(key, _)| format!("--{} / {}", key.flag(), key.env()))
    }
}

impl FromArgMatches for KeyFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = KeyFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for key in all() {
            let id = key.flag();
            let given = matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            let value = if given {
                matches.get_one::<toml::Value>(&id).cloned()
            } else {
                match key.alias().map(|(_, env)| (env, std::env::var(env))) {
                    Some((env, Ok(raw))) if !raw.is_empty() => {
                        Some(key.parse(&raw).map_err(|why| {
                            clap::Error::raw(
                                clap::error::ErrorKind::ValueValidation,
                                format!("invalid value for {env}: {why}\n"),
                            )
                        })?)
                    }
                    _ => None,
                }
            };
            if let Some(value) = value {
                self.values.retain(|(k, _)| k != key);
                self.values.push((key.clone(), value));
            }
        }
        Ok(())
    }
}

impl clap::Args for KeyFlags {
    fn augment_args(mut command: Command) -> Command {
        for key in all() {
            let parser = {
                let key = key.clone();
                clap::builder::StringValueParser::new().try_map(move |raw: String| key.parse(&raw))
            };
            let mut arg = Arg::new(key.flag())
                .long(key.flag())
                .env(key.env())
                .help(match key.section {
                    Some(section) => format!("[{section}] {}", key.name),
                    None => key.name.to_owned(),
                })
                .help_heading(HELP_HEADING)
                .action(ArgAction::Set)
                .value_parser(parser);
            arg = match key.kind {
                // `--flag` alone means true; `--flag=false` is also accepted.
                Kind::Bool => arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
                    .value_name("BOOL"),
                Kind::Integer => arg.value_name("N"),
                Kind::Float => arg.value_name("X"),
                Kind::String => arg.value_name("STRING"),
                Kind::List => arg.value_name("A,B"),
                Kind::Other => arg.value_name("VALUE"),
            };
            if let Some((flag, _)) = key.alias() {
                arg = arg.visible_alias(flag);
            }
            command = command.arg(arg);
        }
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        all()
            .iter()
            .find(|k| k.path() == path)
            .cloned()
            .unwrap_or_else(|| panic!("no key {path}"))
    }

    #[test]
    fn every_file_struct_field_is_a_key_with_its_type() {
        let keys = discover().expect("the File* structs follow the key rules");
        assert_eq!(keys.len(), all().len());
        assert_eq!(key("listen").kind, Kind::String);
        assert_eq!(key("data_dir").kind, Kind::String);
        assert_eq!(key("stream.ping_interval_secs").kind, Kind::Integer);
        assert_eq!(key("limits.max_json_body_bytes").kind, Kind::Integer);
        assert_eq!(key("executor.allow_private_sources").kind, Kind::Bool);
        assert_eq!(key("executor.build_cmd").kind, Kind::String);
    }

    #[test]
    fn enum_and_newtype_keys_are_probed_as_the_values_a_file_writes() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum Format {
            Text,
            Json,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Port(u16);
        let probe = |probe: fn(Probe<'_>) -> bool| {
            let found = RefCell::new(Vec::new());
            let key = Key {
                section: None,
                name: "k",
                kind: Kind::Other,
            };
            assert!(
                !probe(Probe { found: &found, key }),
                "the probe stops the walk"
            );
            found.into_inner().pop().map(|k| k.kind)
        };
        assert_eq!(
            probe(|p| Format::deserialize(p).is_ok()),
            Some(Kind::String)
        );
        assert_eq!(probe(|p| Port::deserialize(p).is_ok()), Some(Kind::Integer));
        assert_eq!(
            probe(|p| Vec::<String>::deserialize(p).is_ok()),
            Some(Kind::List)
        );
    }

    #[test]
    fn flags_and_variables_are_named_after_section_and_key() {
        let k = key("stream.ping_interval_secs");
        assert_eq!(k.flag(), "stream-ping-interval-secs");
        assert_eq!(k.env(), "DEPLOYD_STREAM_PING_INTERVAL_SECS");
        assert_eq!(key("public_url").env(), "DEPLOYD_PUBLIC_URL");
        assert_eq!(key("listen").flag(), "listen");
    }

    #[test]
    fn values_are_parsed_by_the_type_the_key_takes() {
        let int = key("stream.ping_interval_secs");
        assert_eq!(int.parse("15"), Ok(toml::Value::Integer(15)));
        assert!(int.parse("fifteen").is_err());
        let flag = key("executor.allow_private_sources");
        assert_eq!(flag.parse("yes"), Ok(toml::Value::Boolean(true)));
        assert_eq!(flag.parse("0"), Ok(toml::Value::Boolean(false)));
        assert!(flag.parse("maybe").is_err());
        let text = key("executor.build_cmd");
        assert_eq!(text.parse("42"), Ok(toml::Value::String("42".into())));
    }

    #[test]
    fn overlaid_values_win_over_the_file_and_keep_its_other_keys() {
        let mut tree: toml::Table =
            toml::from_str("listen = \"127.0.0.1:1\"\n[stream]\nauth_timeout_secs = 3\n")
                .expect("toml");
        let flags = KeyFlags {
            values: vec![
                (key("listen"), toml::Value::String("127.0.0.1:2".into())),
                (key("stream.ping_interval_secs"), toml::Value::Integer(7)),
                (key("limits.max_upload_bytes"), toml::Value::Integer(9)),
            ],
        };
        flags.overlay(&mut tree);
        let file: FileConfig = toml::Value::Table(tree).try_into().expect("file");
        assert_eq!(file.listen.map(|a| a.port()), Some(2));
        assert_eq!(file.stream.ping_interval_secs, Some(7));
        assert_eq!(file.stream.auth_timeout_secs, Some(3));
        assert_eq!(file.limits.max_upload_bytes, Some(9));
    }

    #[test]
    fn every_key_has_a_readme_row_with_its_flag_and_variable() {
        let readme = include_str!("../../README.md");
        for key in all() {
            let row = readme.lines().find(|line| {
                line.starts_with('|') && line.contains(&format!("`--{}`", key.flag()))
            });
            let row = row.unwrap_or_else(|| panic!("README has no row for --{}", key.flag()));
            assert!(row.contains(&format!("`{}`", key.env())), "{row}");
        }
    }
}
