//! KServe v2 tensor datatypes, shared by the mirror comparison and the mock.

/// A KServe v2 tensor datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
    Bytes,
}

impl DType {
    /// The datatype named `s` (`"FP32"`); `None` for names KServe v2 does not define.
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "BOOL" => DType::Bool,
            "UINT8" => DType::U8,
            "UINT16" => DType::U16,
            "UINT32" => DType::U32,
            "UINT64" => DType::U64,
            "INT8" => DType::I8,
            "INT16" => DType::I16,
            "INT32" => DType::I32,
            "INT64" => DType::I64,
            "FP16" => DType::F16,
            "BF16" => DType::Bf16,
            "FP32" => DType::F32,
            "FP64" => DType::F64,
            "BYTES" => DType::Bytes,
            _ => return None,
        })
    }

    /// Its KServe v2 name.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::Bf16 => "BF16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    /// Element size in bytes; `None` for variable-size BYTES.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::Bf16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// Triton has no JSON representation for the 16-bit float types.
    pub fn json_capable(self) -> bool {
        !matches!(self, DType::F16 | DType::Bf16)
    }

    /// Whether the values are at most single precision, so that printing them
    /// as f64 would show digits the model never produced.
    pub fn is_narrow_float(self) -> bool {
        matches!(self, DType::F16 | DType::Bf16 | DType::F32)
    }
}
