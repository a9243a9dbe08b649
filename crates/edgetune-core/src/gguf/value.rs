//! GGUF metadata values: the thirteen value types, typed arrays, and their JSON summaries.
//!
//! Arrays are stored as typed vectors (`Vec<String>`, `Vec<i32>`, `Vec<f32>`, …) rather than one
//! `Value` per element: a Llama 3 vocabulary is 128,256 strings plus 280,147 merges, and a
//! `Vec<Value>` would cost 32+ bytes per element before the string itself.

use serde_json::json;

/// The type tag of a GGUF value, as stored in the file (`u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// Every value type, in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type with file id `id`, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(id as usize).copied()
    }

    /// The id written in the file.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Lower-case name used in messages and JSON (`u32`, `string`, `array`, …).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Bytes one value of this type takes at least in the file: fixed size for scalars,
    /// the `u64` length of a string, the `u32` type + `u64` count of an array. Used to cap
    /// counts by the bytes left, so no count can make the reader allocate more than a small
    /// multiple of the file size.
    pub fn min_encoded_len(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A GGUF array: one element type, values stored as a typed vector. Arrays may nest
/// (`Array::Array`), and each nested array has its own element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Applies `$body` to the typed vector inside an [`Array`], whatever its element type.
macro_rules! with_vec {
    ($array:expr, $v:ident => $body:expr) => {
        match $array {
            Array::U8($v) => $body,
            Array::I8($v) => $body,
            Array::U16($v) => $body,
            Array::I16($v) => $body,
            Array::U32($v) => $body,
            Array::I32($v) => $body,
            Array::F32($v) => $body,
            Array::Bool($v) => $body,
            Array::String($v) => $body,
            Array::Array($v) => $body,
            Array::U64($v) => $body,
            Array::I64($v) => $body,
            Array::F64($v) => $body,
        }
    };
}

impl Array {
    /// The type of the elements.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (a copy; for bulk access match on the typed vector).
    pub fn get(&self, i: usize) -> Option<Value> {
        match self {
            Array::U8(v) => v.get(i).map(|x| Value::U8(*x)),
            Array::I8(v) => v.get(i).map(|x| Value::I8(*x)),
            Array::U16(v) => v.get(i).map(|x| Value::U16(*x)),
            Array::I16(v) => v.get(i).map(|x| Value::I16(*x)),
            Array::U32(v) => v.get(i).map(|x| Value::U32(*x)),
            Array::I32(v) => v.get(i).map(|x| Value::I32(*x)),
            Array::F32(v) => v.get(i).map(|x| Value::F32(*x)),
            Array::Bool(v) => v.get(i).map(|x| Value::Bool(*x)),
            Array::String(v) => v.get(i).map(|x| Value::String(x.clone())),
            Array::Array(v) => v.get(i).map(|x| Value::Array(x.clone())),
            Array::U64(v) => v.get(i).map(|x| Value::U64(*x)),
            Array::I64(v) => v.get(i).map(|x| Value::I64(*x)),
            Array::F64(v) => v.get(i).map(|x| Value::F64(*x)),
        }
    }

    /// `array[<element type>]`, e.g. `array[string]`; nested arrays print as `array[array]`.
    pub fn type_name(&self) -> &'static str {
        match self.elem_type() {
            ValueType::U8 => "array[u8]",
            ValueType::I8 => "array[i8]",
            ValueType::U16 => "array[u16]",
            ValueType::I16 => "array[i16]",
            ValueType::U32 => "array[u32]",
            ValueType::I32 => "array[i32]",
            ValueType::F32 => "array[f32]",
            ValueType::Bool => "array[bool]",
            ValueType::String => "array[string]",
            ValueType::Array => "array[array]",
            ValueType::U64 => "array[u64]",
            ValueType::I64 => "array[i64]",
            ValueType::F64 => "array[f64]",
        }
    }

    /// Nesting depth: 1 for an array of scalars, 1 + the deepest element for nested arrays.
    pub fn depth(&self) -> usize {
        match self {
            Array::Array(v) => 1 + v.iter().map(Array::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// JSON: a plain list when `len() <= max_array`, else
    /// `{"type": "array[string]", "len": n, "head": [first max_array elements]}`.
    pub fn to_json(&self, max_array: usize) -> serde_json::Value {
        let n = self.len();
        let head = n.min(max_array);
        let items: Vec<serde_json::Value> = match self {
            Array::String(v) => v[..head].iter().map(|s| json!(s)).collect(),
            Array::Array(v) => v[..head].iter().map(|a| a.to_json(max_array)).collect(),
            Array::F32(v) => v[..head].iter().map(|x| float_json(*x as f64)).collect(),
            Array::F64(v) => v[..head].iter().map(|x| float_json(*x)).collect(),
            Array::U8(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::I8(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::U16(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::I16(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::U32(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::I32(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::Bool(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::U64(v) => v[..head].iter().map(|x| json!(x)).collect(),
            Array::I64(v) => v[..head].iter().map(|x| json!(x)).collect(),
        };
        if n <= max_array {
            serde_json::Value::Array(items)
        } else {
            json!({ "type": self.type_name(), "len": n, "head": items })
        }
    }
}

/// JSON has no NaN or infinities: those become strings (`"NaN"`, `"inf"`, `"-inf"`).
fn float_json(x: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(x) {
        Some(n) => serde_json::Value::Number(n),
        None => serde_json::Value::String(format!("{x}")),
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// `u32`, `string`, `array[string]`, …
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Array(a) => a.type_name(),
            v => v.value_type().name(),
        }
    }

    /// The value as an integer when it is one of the eight integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// JSON for `inspect`-style output; arrays longer than `max_array` are summarised
    /// (see [`Array::to_json`]). Non-finite floats become strings.
    pub fn to_json(&self, max_array: usize) -> serde_json::Value {
        match self {
            Value::U8(x) => json!(x),
            Value::I8(x) => json!(x),
            Value::U16(x) => json!(x),
            Value::I16(x) => json!(x),
            Value::U32(x) => json!(x),
            Value::I32(x) => json!(x),
            Value::F32(x) => float_json(*x as f64),
            Value::Bool(x) => json!(x),
            Value::String(s) => json!(s),
            Value::Array(a) => a.to_json(max_array),
            Value::U64(x) => json!(x),
            Value::I64(x) => json!(x),
            Value::F64(x) => float_json(*x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for (i, t) in ValueType::ALL.iter().enumerate() {
            assert_eq!(t.id(), i as u32);
            assert_eq!(ValueType::from_id(i as u32), Some(*t));
        }
        assert_eq!(ValueType::from_id(13), None);
        assert_eq!(ValueType::from_id(u32::MAX), None);
    }

    #[test]
    fn names_and_json_summaries() {
        let tokens = Value::Array(Array::String((0..10).map(|i| format!("t{i}")).collect()));
        assert_eq!(tokens.type_name(), "array[string]");
        assert_eq!(Value::U32(3).type_name(), "u32");
        assert_eq!(
            tokens.to_json(3),
            json!({"type": "array[string]", "len": 10, "head": ["t0", "t1", "t2"]})
        );
        assert_eq!(tokens.to_json(10).as_array().map(Vec::len), Some(10));
        assert_eq!(Value::F32(f32::NAN).to_json(4), json!("NaN"));
        assert_eq!(Value::F32(0.5).to_json(4), json!(0.5));
        let nested = Array::Array(vec![Array::U8(vec![1]), Array::Array(vec![])]);
        assert_eq!(nested.depth(), 2);
        assert_eq!(Value::Array(nested).to_json(8), json!([[1], []]));
    }
}
