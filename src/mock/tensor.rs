//! KServe v2 tensor datatypes and the conversions the echo model needs between
//! Triton's binary tensor layout (little-endian, BYTES length-prefixed) and JSON `data`.

use serde_json::Value;

pub(crate) use filters::tensor::DType;

/// Number of elements a shape describes; rejects negative dims and overflow.
pub(crate) fn element_count(shape: &[i64]) -> Result<u64, String> {
    shape.iter().try_fold(1u64, |acc, &d| {
        let d = u64::try_from(d).map_err(|_| format!("invalid negative dimension {d} in shape"))?;
        acc.checked_mul(d)
            .ok_or_else(|| "shape element count overflows".to_string())
    })
}

/// Validates the byte size of a raw fixed-size tensor against its shape, like Triton.
pub(crate) fn check_raw_size(
    input: &str,
    model: &str,
    dtype: DType,
    shape: &[i64],
    len: usize,
) -> Result<(), String> {
    let Some(size) = dtype.size() else {
        return Ok(());
    };
    let expected = element_count(shape)?.checked_mul(size as u64);
    if expected != Some(len as u64) {
        let expected = expected.map_or_else(|| "overflow".to_string(), |e| e.to_string());
        return Err(format!(
            "input byte size mismatch for input '{input}' for model '{model}'. Expected {expected}, got {len}"
        ));
    }
    Ok(())
}

/// Flattens nested JSON arrays (Triton accepts both nested and flat `data`).
/// serde_json caps nesting at 128 levels, so recursion depth is bounded.
pub(crate) fn flatten_json(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten_json(item, out);
            }
        }
        other => out.push(other),
    }
}

fn bad_element(input: &str, dtype: DType, v: &Value) -> String {
    format!(
        "unable to parse 'data' of input '{input}': expected {} element, got {v}",
        dtype.as_str()
    )
}

fn uint<T: TryFrom<u64>>(v: &Value) -> Option<T> {
    v.as_u64().and_then(|n| T::try_from(n).ok())
}

fn int<T: TryFrom<i64>>(v: &Value) -> Option<T> {
    v.as_i64().and_then(|n| T::try_from(n).ok())
}

/// Serialises flat JSON `data` into Triton's binary tensor layout.
pub(crate) fn json_to_raw(input: &str, dtype: DType, values: &[Value]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(values.len() * dtype.size().unwrap_or(8));
    for v in values {
        let bad = || bad_element(input, dtype, v);
        match dtype {
            DType::Bool => out.push(u8::from(v.as_bool().ok_or_else(bad)?)),
            DType::U8 => out.extend(uint::<u8>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::U16 => out.extend(uint::<u16>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::U32 => out.extend(uint::<u32>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::U64 => out.extend(uint::<u64>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::I8 => out.extend(int::<i8>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::I16 => out.extend(int::<i16>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::I32 => out.extend(int::<i32>(v).ok_or_else(bad)?.to_le_bytes()),
            DType::I64 => out.extend(int::<i64>(v).ok_or_else(bad)?.to_le_bytes()),
            // Narrowing to f32 is the datatype's own precision, as in Triton.
            DType::F32 => out.extend((v.as_f64().ok_or_else(bad)? as f32).to_le_bytes()),
            DType::F64 => out.extend(v.as_f64().ok_or_else(bad)?.to_le_bytes()),
            DType::Bytes => {
                let s = v.as_str().ok_or_else(bad)?;
                let len = u32::try_from(s.len()).map_err(|_| bad())?;
                out.extend(len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            DType::F16 | DType::Bf16 => {
                return Err(format!(
                    "receiving {} data via JSON is not supported. Please use the binary data format for input '{input}'",
                    dtype.as_str()
                ))
            }
        }
    }
    Ok(out)
}

fn float_value(f: f64) -> Value {
    // JSON has no NaN/Inf; null is what serde_json produces for them too.
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Decodes Triton's binary tensor layout into flat JSON `data`.
/// `raw` with `offset` added to every element of a floating-point tensor (FP32, FP64);
/// other datatypes come back unchanged. A test hook for answers that differ.
pub(crate) fn offset_floats(dtype: DType, raw: &[u8], offset: f64) -> Vec<u8> {
    match dtype {
        DType::F32 => raw
            .chunks_exact(4)
            .flat_map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                (v + offset as f32).to_le_bytes()
            })
            .collect(),
        DType::F64 => raw
            .chunks_exact(8)
            .flat_map(|c| {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(c);
                (f64::from_le_bytes(bytes) + offset).to_le_bytes()
            })
            .collect(),
        _ => raw.to_vec(),
    }
}

pub(crate) fn raw_to_json(output: &str, dtype: DType, raw: &[u8]) -> Result<Vec<Value>, String> {
    fn fixed<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> Value) -> Vec<Value> {
        raw.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    if let Some(size) = dtype.size() {
        if raw.len() % size != 0 {
            return Err(format!(
                "output '{output}' byte size {} is not a multiple of the {} element size",
                raw.len(),
                dtype.as_str()
            ));
        }
    }
    Ok(match dtype {
        DType::Bool => raw.iter().map(|&b| Value::Bool(b != 0)).collect(),
        DType::U8 => fixed::<1>(raw, |a| Value::from(u8::from_le_bytes(a))),
        DType::U16 => fixed::<2>(raw, |a| Value::from(u16::from_le_bytes(a))),
        DType::U32 => fixed::<4>(raw, |a| Value::from(u32::from_le_bytes(a))),
        DType::U64 => fixed::<8>(raw, |a| Value::from(u64::from_le_bytes(a))),
        DType::I8 => fixed::<1>(raw, |a| Value::from(i8::from_le_bytes(a))),
        DType::I16 => fixed::<2>(raw, |a| Value::from(i16::from_le_bytes(a))),
        DType::I32 => fixed::<4>(raw, |a| Value::from(i32::from_le_bytes(a))),
        DType::I64 => fixed::<8>(raw, |a| Value::from(i64::from_le_bytes(a))),
        DType::F32 => fixed::<4>(raw, |a| float_value(f64::from(f32::from_le_bytes(a)))),
        DType::F64 => fixed::<8>(raw, |a| float_value(f64::from_le_bytes(a))),
        DType::Bytes => {
            let mut out = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| format!("truncated BYTES element length in '{output}'"))?;
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(format!("truncated BYTES element in '{output}'"));
                }
                let (elem, tail) = tail.split_at(len);
                out.push(Value::String(String::from_utf8_lossy(elem).into_owned()));
                rest = tail;
            }
            out
        }
        DType::F16 | DType::Bf16 => {
            return Err(format!(
                "sending {} data via JSON is not supported. Please use the binary data format for output '{output}'",
                dtype.as_str()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roundtrip_all_json_types() {
        let cases = [
            ("BOOL", json!([true, false, true])),
            ("UINT8", json!([0, 255])),
            ("UINT16", json!([0, 65535])),
            ("UINT32", json!([0, 4294967295u64])),
            ("UINT64", json!([0, u64::MAX])),
            ("INT8", json!([-128, 127])),
            ("INT16", json!([-32768, 32767])),
            ("INT32", json!([i32::MIN, i32::MAX])),
            ("INT64", json!([i64::MIN, i64::MAX])),
            ("FP32", json!([1.5, -2.25])),
            ("FP64", json!([1.000001, -1e300])),
            ("BYTES", json!(["", "hello", "ünï"])),
        ];
        for (dt, data) in cases {
            let dtype = DType::parse(dt).expect("known dtype");
            let Value::Array(values) = data else {
                unreachable!()
            };
            let raw = json_to_raw("x", dtype, &values).expect("encode");
            let back = raw_to_json("x", dtype, &raw).expect("decode");
            assert_eq!(back, values, "{dt}");
        }
    }

    #[test]
    fn rejects_bad_values_and_sizes() {
        assert!(json_to_raw("x", DType::U8, &[json!(256)]).is_err());
        assert!(json_to_raw("x", DType::I32, &[json!("a")]).is_err());
        assert!(json_to_raw("x", DType::F16, &[json!(1.0)]).is_err());
        assert!(raw_to_json("x", DType::I32, &[1, 2, 3]).is_err());
        assert!(raw_to_json("x", DType::Bytes, &[5, 0, 0, 0, b'a']).is_err());
        assert!(raw_to_json("x", DType::Bytes, &[5, 0]).is_err());
        assert!(element_count(&[-1]).is_err());
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
        assert_eq!(element_count(&[]), Ok(1));
        assert!(check_raw_size("x", "m", DType::F32, &[2, 2], 16).is_ok());
        assert!(check_raw_size("x", "m", DType::F32, &[2, 2], 15).is_err());
        assert!(check_raw_size("x", "m", DType::F32, &[i64::MAX, 4], 0).is_err());
    }

    #[test]
    fn flattens_nested_data() {
        let mut out = Vec::new();
        flatten_json(json!([[1, 2], [3, [4]]]), &mut out);
        assert_eq!(out, vec![json!(1), json!(2), json!(3), json!(4)]);
    }
}
