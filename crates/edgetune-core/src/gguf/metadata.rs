//! The ordered key → value table of a GGUF file, and `GgufFile`'s typed getters.
//!
//! Typed getters convert between integer types when the value fits exactly (files in the wild
//! store `context_length` as u32 or u64, token ids as u32 or i32); `f32` accepts F32 and F64
//! (an F64 is rounded to the nearest f32). Anything else is `Error::Metadata` naming the file,
//! the key and the type found.

use std::collections::HashMap;

use super::GgufFile;
use super::value::{Array, Value};
use crate::Error;

/// Metadata in file order, with a name index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key`; when the key exists already, returns its position and changes nothing.
    pub fn insert(&mut self, key: String, value: Value) -> Result<(), usize> {
        if let Some(&i) = self.index.get(&key) {
            return Err(i);
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Replaces the value of an existing `key` in place (its position is kept).
    pub fn replace(&mut self, key: &str, value: Value) -> Result<(), String> {
        match self.index.get(key) {
            Some(&i) => {
                self.entries[i].1 = value;
                Ok(())
            }
            None => Err(format!("metadata key `{key}` is not present")),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Position of `key` in file order.
    pub fn position(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Generates `name` (missing → error) and `opt_name` (missing → `Ok(None)`) from one converter
/// `fn(&Value) -> Result<T, String>` whose error text says why the value does not fit.
macro_rules! getters {
    ($($(#[$doc:meta])* $name:ident, $opt:ident, $ty:ty, $conv:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self, key: &str) -> crate::Result<$ty> {
            self.$opt(key)?.ok_or_else(|| self.meta_err(key, "missing".into()))
        }

        $(#[$doc])*
        /// Missing → `Ok(None)`; present with another type → error.
        pub fn $opt(&self, key: &str) -> crate::Result<Option<$ty>> {
            match self.get(key) {
                None => Ok(None),
                Some(v) => {
                    let conv: fn(&Value) -> Result<$ty, String> = $conv;
                    conv(v).map(Some).map_err(|what| self.meta_err(key, what))
                }
            }
        }
    )*};
}

fn int<T: TryFrom<i128>>(v: &Value, want: &str) -> Result<T, String> {
    match v.as_i128() {
        Some(x) => T::try_from(x)
            .map_err(|_| format!("value {x} ({}) does not fit in {want}", v.type_name())),
        None => Err(found(v, want)),
    }
}

fn found(v: &Value, want: &str) -> String {
    format!("expected {want}, found {}", v.type_name())
}

fn array<'a>(v: &'a Value, want: &str) -> Result<&'a Array, String> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(found(v, want)),
    }
}

impl GgufFile {
    fn meta_err(&self, key: &str, what: String) -> Error {
        Error::Metadata {
            path: self.path().to_path_buf(),
            key: key.to_string(),
            what,
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }

    getters! {
        /// Any integer type whose value fits in u32.
        u32, opt_u32, u32, |v| int(v, "u32");
        /// Any integer type whose value fits in u64.
        u64, opt_u64, u64, |v| int(v, "u64");
        /// Any integer type whose value fits in i32.
        i32, opt_i32, i32, |v| int(v, "i32");
        /// Any integer type whose value fits in i64.
        i64, opt_i64, i64, |v| int(v, "i64");
        /// F32, or F64 rounded to the nearest f32.
        f32, opt_f32, f32, |v| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            _ => Err(found(v, "f32")),
        };
        /// Bool only.
        bool, opt_bool, bool, |v| match v {
            Value::Bool(x) => Ok(*x),
            _ => Err(found(v, "bool")),
        };
    }

    /// A string value (borrowed).
    pub fn str(&self, key: &str) -> crate::Result<&str> {
        self.opt_str(key)?
            .ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    /// A string value; missing → `Ok(None)`.
    pub fn opt_str(&self, key: &str) -> crate::Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.meta_err(key, found(v, "string"))),
        }
    }

    /// Any array value.
    pub fn array(&self, key: &str) -> crate::Result<&Array> {
        self.opt_array(key)?
            .ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    /// Any array value; missing → `Ok(None)`.
    pub fn opt_array(&self, key: &str) -> crate::Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => array(v, "array")
                .map(Some)
                .map_err(|w| self.meta_err(key, w)),
        }
    }

    /// An `array[string]` (e.g. `tokenizer.ggml.tokens`), borrowed as a slice.
    pub fn string_array(&self, key: &str) -> crate::Result<&[String]> {
        self.opt_string_array(key)?
            .ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    /// An `array[string]`; missing → `Ok(None)`.
    pub fn opt_string_array(&self, key: &str) -> crate::Result<Option<&[String]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::String(v)) => Ok(Some(v)),
            Some(a) => Err(self.meta_err(
                key,
                format!("expected array[string], found {}", a.type_name()),
            )),
        }
    }

    /// An `array[f32]` (e.g. `tokenizer.ggml.scores`). No conversion from other types.
    pub fn f32_array(&self, key: &str) -> crate::Result<&[f32]> {
        self.opt_f32_array(key)?
            .ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    /// An `array[f32]`; missing → `Ok(None)`.
    pub fn opt_f32_array(&self, key: &str) -> crate::Result<Option<&[f32]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::F32(v)) => Ok(Some(v)),
            Some(a) => {
                Err(self.meta_err(key, format!("expected array[f32], found {}", a.type_name())))
            }
        }
    }

    /// An `array[i32]` (e.g. `tokenizer.ggml.token_type`). No conversion from other types:
    /// use [`GgufFile::array`] and match on the typed vector for u32 arrays.
    pub fn i32_array(&self, key: &str) -> crate::Result<&[i32]> {
        self.opt_i32_array(key)?
            .ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    /// An `array[i32]`; missing → `Ok(None)`.
    pub fn opt_i32_array(&self, key: &str) -> crate::Result<Option<&[i32]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::I32(v)) => Ok(Some(v)),
            Some(a) => {
                Err(self.meta_err(key, format!("expected array[i32], found {}", a.type_name())))
            }
        }
    }
}
