//! Whether a mirror's inference answers agree with the primary's.
//!
//! Answers arrive in either protocol and either representation (Triton's
//! binary layout or JSON `data`), so values are normalised per element and
//! decoded lazily from the bytes: comparing never allocates per element, and a
//! shape that lies about the data's size is a mismatch, never an allocation.

use bytes::Bytes;
use serde_json::Value;

use crate::tensor::DType;

/// One inference answer, decoded from either protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status, or the gRPC status code (0 = OK). Both sides of one comparison come from the same protocol.
    pub status: u32,
    /// The model version that answered ("" when not said).
    pub model_version: String,
    /// The output tensors; none for an error answer.
    pub outputs: Vec<Tensor>,
}

/// One output tensor of an [`Answer`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The output's name, which pairs it with the other side's.
    pub name: String,
    /// The KServe v2 datatype (`"FP32"`, `"BYTES"`, ...).
    pub datatype: String,
    /// The dimensions; their product is the element count.
    pub shape: Vec<i64>,
    /// The elements, in either representation.
    pub data: TensorData,
}

/// A tensor's elements, as the answer carried them.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Triton's binary layout: little-endian fixed-size elements; for BYTES, each element is a 4-byte little-endian length then the bytes. (HTTP binary outputs, gRPC raw_output_contents.)
    Raw(Bytes),
    /// JSON `data`, flattened in row-major order (nested arrays flattened).
    Json(Vec<Value>),
}

/// How far two floating-point elements may differ and still agree:
/// `|p − m| <= absolute + relative × |p|`, with `p` the primary's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Allowed difference regardless of magnitude (matters near zero).
    pub absolute: f64,
    /// Allowed difference as a fraction of the primary's value.
    pub relative: f64,
}

/// The verdict of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The first difference found, for logs; None when the answers match.
    pub mismatch: Option<String>,
    /// Largest |primary − mirror| over the numeric elements compared (0 when none).
    pub max_abs_error: f64,
    /// Largest |primary − mirror| / |primary| over numeric elements with primary ≠ 0 (0 when none).
    pub max_rel_error: f64,
}

/// Compares answers pairwise in order (a unary call has one each, a stream one per message).
pub fn compare(primary: &[Answer], mirror: &[Answer], tolerance: Tolerance) -> Comparison {
    let mut report = Report::default();
    if primary.len() != mirror.len() {
        report.mismatch(|| {
            format!(
                "primary sent {} answers, mirror {}",
                primary.len(),
                mirror.len()
            )
        });
    }
    // A stream's messages need their index to be found in the logs; a unary answer does not.
    let numbered = primary.len() > 1 || mirror.len() > 1;
    // The common prefix is still compared so the errors describe what both sides sent.
    for (index, (p, m)) in primary.iter().zip(mirror).enumerate() {
        report.answer = numbered.then_some(index);
        compare_answer(&mut report, p, m, tolerance);
    }
    Comparison {
        mismatch: report.mismatch,
        max_abs_error: report.max_abs_error,
        max_rel_error: report.max_rel_error,
    }
}

/// The comparison so far: the first mismatch and the largest errors.
#[derive(Default)]
struct Report {
    mismatch: Option<String>,
    max_abs_error: f64,
    max_rel_error: f64,
    /// The answer being compared, when there are several.
    answer: Option<usize>,
}

impl Report {
    /// Records a mismatch unless an earlier one was found; the text is only
    /// built for the first, so scanning on after it costs nothing.
    fn mismatch(&mut self, describe: impl FnOnce() -> String) {
        if self.mismatch.is_none() {
            self.mismatch = Some(match self.answer {
                Some(index) => format!("answer {index}: {}", describe()),
                None => describe(),
            });
        }
    }

    fn record_error(&mut self, primary: f64, abs_error: f64) {
        self.max_abs_error = self.max_abs_error.max(abs_error);
        if primary != 0.0 {
            self.max_rel_error = self.max_rel_error.max(abs_error / primary.abs());
        }
    }
}

fn compare_answer(report: &mut Report, primary: &Answer, mirror: &Answer, tolerance: Tolerance) {
    if primary.status != mirror.status {
        report.mismatch(|| format!("status {} vs {}", primary.status, mirror.status));
        return;
    }
    let missing = || unmatched_names(&primary.outputs, &mirror.outputs);
    let extra = || unmatched_names(&mirror.outputs, &primary.outputs);
    if missing().next().is_some() || extra().next().is_some() {
        report.mismatch(|| {
            let list = |names: &mut dyn Iterator<Item = &str>| {
                names
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "outputs missing from mirror: [{}], only in mirror: [{}]",
                list(&mut missing()),
                list(&mut extra())
            )
        });
    }
    for p in &primary.outputs {
        if let Some(m) = mirror.outputs.iter().find(|m| m.name == p.name) {
            compare_tensor(report, p, m, tolerance);
        }
    }
}

/// Names of the outputs in `these` that `others` lacks.
fn unmatched_names<'a>(these: &'a [Tensor], others: &'a [Tensor]) -> impl Iterator<Item = &'a str> {
    these
        .iter()
        .filter(|t| !others.iter().any(|o| o.name == t.name))
        .map(|t| t.name.as_str())
}

fn compare_tensor(report: &mut Report, primary: &Tensor, mirror: &Tensor, tolerance: Tolerance) {
    let name = primary.name.as_str();
    if primary.datatype != mirror.datatype {
        report.mismatch(|| {
            format!(
                "output {name:?}: datatype {} vs {}",
                primary.datatype, mirror.datatype
            )
        });
        return;
    }
    if primary.shape != mirror.shape {
        report.mismatch(|| {
            format!(
                "output {name:?}: shape {:?} vs {:?}",
                primary.shape, mirror.shape
            )
        });
        return;
    }
    let Some(count) = element_count(&primary.shape) else {
        report.mismatch(|| format!("output {name:?}: invalid shape {:?}", primary.shape));
        return;
    };
    let Some(dtype) = DType::parse(&primary.datatype) else {
        compare_opaque(report, primary, mirror, count);
        return;
    };
    let (Some(p), Some(m)) = (
        elements(report, "primary", primary, dtype, count),
        elements(report, "mirror", mirror, dtype, count),
    ) else {
        return;
    };
    for (index, (p, m)) in p.zip(m).enumerate() {
        compare_element(report, tolerance, name, index, dtype, p, m);
    }
}

/// The number of elements `shape` describes; None for a negative dimension or overflow.
fn element_count(shape: &[i64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |count, &dimension| {
        count.checked_mul(u64::try_from(dimension).ok()?)
    })
}

/// Data of a datatype this module does not know: only exact equality can be judged.
fn compare_opaque(report: &mut Report, primary: &Tensor, mirror: &Tensor, count: u64) {
    let name = primary.name.as_str();
    let datatype = primary.datatype.as_str();
    match (&primary.data, &mirror.data) {
        (TensorData::Raw(p), TensorData::Raw(m)) => {
            if p != m {
                report.mismatch(|| format!("output {name:?}: {datatype} data differs"));
            }
        }
        (TensorData::Json(p), TensorData::Json(m)) => {
            for (side, values) in [("primary", p), ("mirror", m)] {
                if values.len() as u64 != count {
                    report.mismatch(|| json_count_mismatch(name, side, values.len(), primary));
                    return;
                }
            }
            if let Some((index, (p, m))) = p.iter().zip(m).enumerate().find(|(_, (p, m))| p != m) {
                report.mismatch(|| format!("output {name:?} element {index}: {p} vs {m}"));
            }
        }
        _ => report.mismatch(|| {
            format!(
                "output {name:?}: cannot compare raw and JSON data of unknown datatype {datatype}"
            )
        }),
    }
}

fn json_count_mismatch(name: &str, side: &str, len: usize, tensor: &Tensor) -> String {
    format!(
        "output {name:?}: {side} has {len} JSON elements, shape {:?} needs {}",
        tensor.shape,
        element_count(&tensor.shape).unwrap_or(0)
    )
}

/// The tensor's elements, after checking that the data holds exactly `count`
/// of them; None (with the mismatch recorded) when it does not.
fn elements<'a>(
    report: &mut Report,
    side: &str,
    tensor: &'a Tensor,
    dtype: DType,
    count: u64,
) -> Option<Elements<'a>> {
    let name = tensor.name.as_str();
    match &tensor.data {
        TensorData::Json(values) => {
            if values.len() as u64 != count {
                report.mismatch(|| json_count_mismatch(name, side, values.len(), tensor));
                return None;
            }
            Some(Elements::Json {
                dtype,
                values: values.iter(),
            })
        }
        TensorData::Raw(bytes) => {
            let consistent = match dtype.size() {
                Some(size) => count.checked_mul(size as u64) == Some(bytes.len() as u64),
                None => raw_bytes_count(bytes, count) == Some(count),
            };
            if !consistent {
                report.mismatch(|| {
                    format!(
                        "output {name:?}: {side}'s {} bytes of {} data do not hold shape {:?}",
                        bytes.len(),
                        dtype.as_str(),
                        tensor.shape
                    )
                });
                return None;
            }
            Some(Elements::Raw { dtype, rest: bytes })
        }
    }
}

/// How many length-prefixed BYTES elements `raw` holds; None when the last one
/// is truncated or there are more than `limit` (no need to count further).
fn raw_bytes_count(raw: &[u8], limit: u64) -> Option<u64> {
    let mut rest = raw;
    let mut count = 0u64;
    while !rest.is_empty() {
        decode_raw(DType::Bytes, &mut rest)?;
        count += 1;
        if count > limit {
            return None;
        }
    }
    Some(count)
}

/// One element, normalised so that both representations compare alike.
#[derive(Clone, Copy, Debug)]
enum Element<'a> {
    Bool(bool),
    /// Every integer type fits, signed or not.
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    /// A JSON value of the wrong kind for the datatype.
    Invalid(&'a Value),
}

/// A tensor's elements, decoded one at a time.
enum Elements<'a> {
    Raw {
        dtype: DType,
        rest: &'a [u8],
    },
    Json {
        dtype: DType,
        values: std::slice::Iter<'a, Value>,
    },
}

impl<'a> Iterator for Elements<'a> {
    type Item = Element<'a>;

    fn next(&mut self) -> Option<Element<'a>> {
        match self {
            Elements::Raw { dtype, rest } => decode_raw(*dtype, rest),
            Elements::Json { dtype, values } => {
                values.next().map(|value| decode_json(*dtype, value))
            }
        }
    }
}

/// Takes the next element off the front of `rest`; None when too few bytes remain.
fn decode_raw<'a>(dtype: DType, rest: &mut &'a [u8]) -> Option<Element<'a>> {
    Some(match dtype {
        DType::Bool => Element::Bool(take::<1>(rest)? != [0]),
        DType::U8 => Element::Int(u8::from_le_bytes(take(rest)?).into()),
        DType::U16 => Element::Int(u16::from_le_bytes(take(rest)?).into()),
        DType::U32 => Element::Int(u32::from_le_bytes(take(rest)?).into()),
        DType::U64 => Element::Int(u64::from_le_bytes(take(rest)?).into()),
        DType::I8 => Element::Int(i8::from_le_bytes(take(rest)?).into()),
        DType::I16 => Element::Int(i16::from_le_bytes(take(rest)?).into()),
        DType::I32 => Element::Int(i32::from_le_bytes(take(rest)?).into()),
        DType::I64 => Element::Int(i64::from_le_bytes(take(rest)?).into()),
        DType::F16 => Element::Float(f16_to_f64(u16::from_le_bytes(take(rest)?))),
        DType::Bf16 => Element::Float(bf16_to_f64(u16::from_le_bytes(take(rest)?))),
        DType::F32 => Element::Float(f32::from_le_bytes(take(rest)?).into()),
        DType::F64 => Element::Float(f64::from_le_bytes(take(rest)?)),
        DType::Bytes => {
            let len = usize::try_from(u32::from_le_bytes(take(rest)?)).ok()?;
            let (element, tail) = rest.split_at_checked(len)?;
            *rest = tail;
            Element::Bytes(element)
        }
    })
}

fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_at_checked(N)?;
    *rest = tail;
    head.try_into().ok()
}

fn decode_json(dtype: DType, value: &Value) -> Element<'_> {
    let element = match dtype {
        DType::Bool => value.as_bool().map(Element::Bool),
        DType::U8
        | DType::U16
        | DType::U32
        | DType::U64
        | DType::I8
        | DType::I16
        | DType::I32
        | DType::I64 => value
            .as_i64()
            .map(i128::from)
            .or_else(|| value.as_u64().map(i128::from))
            .map(Element::Int),
        // The model produced values of the datatype's precision, which JSON
        // spells as decimals; rounding them back keeps a raw side and a JSON
        // side of the same tensor equal at zero tolerance.
        DType::F16 | DType::Bf16 | DType::F32 => {
            value.as_f64().map(|x| Element::Float(f64::from(x as f32)))
        }
        DType::F64 => value.as_f64().map(Element::Float),
        DType::Bytes => value.as_str().map(|s| Element::Bytes(s.as_bytes())),
    };
    element.unwrap_or(Element::Invalid(value))
}

/// IEEE 754 binary16, which has no type in std.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// bfloat16 is the top half of an f32.
fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

fn compare_element(
    report: &mut Report,
    tolerance: Tolerance,
    name: &str,
    index: usize,
    dtype: DType,
    primary: Element<'_>,
    mirror: Element<'_>,
) {
    let at = || format!("output {name:?} element {index}");
    match (primary, mirror) {
        (Element::Invalid(value), _) | (_, Element::Invalid(value)) => {
            report.mismatch(|| format!("{}: {value} is not a {} value", at(), dtype.as_str()));
        }
        (Element::Bool(p), Element::Bool(m)) => {
            if p != m {
                report.mismatch(|| format!("{}: {p} vs {m}", at()));
            }
        }
        (Element::Int(p), Element::Int(m)) => {
            let error = p.abs_diff(m) as f64;
            report.record_error(p as f64, error);
            if p != m {
                report.mismatch(|| format!("{}: {p} vs {m} (error {error})", at()));
            }
        }
        (Element::Float(p), Element::Float(m)) => {
            if !compare_floats(report, tolerance, p, m) {
                report.mismatch(|| {
                    let error = (p - m).abs();
                    if dtype.is_narrow_float() {
                        let (p, m, error) = (p as f32, m as f32, error as f32);
                        format!("{}: {p} vs {m} (error {error})", at())
                    } else {
                        format!("{}: {p} vs {m} (error {error})", at())
                    }
                });
            }
        }
        (Element::Bytes(p), Element::Bytes(m)) => {
            if p != m {
                report.mismatch(|| format!("{}: {} vs {}", at(), show_bytes(p), show_bytes(m)));
            }
        }
        // Both sides decode by the same datatype, so their kinds always agree.
        (p, m) => report.mismatch(|| format!("{}: {p:?} vs {m:?}", at())),
    }
}

/// Whether two float elements agree, recording the error of finite pairs.
fn compare_floats(report: &mut Report, tolerance: Tolerance, primary: f64, mirror: f64) -> bool {
    if primary.is_nan() && mirror.is_nan() {
        return true;
    }
    if !primary.is_finite() || !mirror.is_finite() {
        return primary == mirror;
    }
    let error = (primary - mirror).abs();
    report.record_error(primary, error);
    error <= tolerance.absolute + tolerance.relative * primary.abs()
}

/// A BYTES element for a log line: long ones are cut, binary ones escaped.
fn show_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shown = String::from_utf8_lossy(bytes.get(..SHOWN).unwrap_or(bytes));
    if bytes.len() > SHOWN {
        format!("{shown:?}... ({} bytes)", bytes.len())
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const EXACT: Tolerance = Tolerance {
        absolute: 0.0,
        relative: 0.0,
    };

    fn answer(outputs: Vec<Tensor>) -> Answer {
        Answer {
            status: 200,
            model_version: "1".to_string(),
            outputs,
        }
    }

    fn tensor(name: &str, datatype: &str, shape: &[i64], data: TensorData) -> Tensor {
        Tensor {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape: shape.to_vec(),
            data,
        }
    }

    fn fp32(values: &[f32]) -> TensorData {
        TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn fp32_answer(values: &[f32]) -> Answer {
        let shape = [1, values.len() as i64];
        answer(vec![tensor("OUTPUT0", "FP32", &shape, fp32(values))])
    }

    fn json(values: Value) -> TensorData {
        match values {
            Value::Array(items) => TensorData::Json(items),
            other => TensorData::Json(vec![other]),
        }
    }

    fn compare_one(primary: Answer, mirror: Answer, tolerance: Tolerance) -> Comparison {
        compare(&[primary], &[mirror], tolerance)
    }

    #[test]
    fn identical_answers_match_with_no_error() {
        let a = fp32_answer(&[1.0, -2.5, 3.25, 0.0]);
        let verdict = compare_one(a.clone(), a, EXACT);
        assert_eq!(
            verdict,
            Comparison {
                mismatch: None,
                max_abs_error: 0.0,
                max_rel_error: 0.0
            }
        );
    }

    #[test]
    fn differences_within_tolerance_match_and_report_the_largest_errors() {
        let primary = fp32_answer(&[1.0, 2.0, 0.0, 4.0]);
        let mirror = fp32_answer(&[1.5, 2.25, 0.125, 4.0]);
        let tolerance = Tolerance {
            absolute: 0.125,
            relative: 0.5,
        };
        let verdict = compare_one(primary, mirror, tolerance);
        assert_eq!(verdict.mismatch, None);
        assert_eq!(verdict.max_abs_error, 0.5);
        // 0.5 / 1.0 beats 0.25 / 2.0; the zero primary has no relative error.
        assert_eq!(verdict.max_rel_error, 0.5);
    }

    #[test]
    fn differences_beyond_tolerance_mismatch_and_scanning_goes_on() {
        let primary = fp32_answer(&[0.0, 0.5, 1.0, 10.0]);
        let mirror = fp32_answer(&[0.0, 0.75, 1.0, 13.0]);
        let tolerance = Tolerance {
            absolute: 0.1,
            relative: 0.0,
        };
        let verdict = compare_one(primary, mirror, tolerance);
        assert_eq!(
            verdict.mismatch.as_deref(),
            Some(r#"output "OUTPUT0" element 1: 0.5 vs 0.75 (error 0.25)"#)
        );
        assert_eq!(verdict.max_abs_error, 3.0);
        assert!((verdict.max_rel_error - 0.5).abs() < 1e-12);
    }

    #[test]
    fn integer_differences_are_mismatches_and_errors() {
        let ints = |values: &[i64]| {
            let data = TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect());
            answer(vec![tensor("OUT", "INT64", &[values.len() as i64], data)])
        };
        let verdict = compare_one(ints(&[4, -8, i64::MIN]), ints(&[4, -6, i64::MIN]), EXACT);
        assert_eq!(
            verdict.mismatch.as_deref(),
            Some(r#"output "OUT" element 1: -8 vs -6 (error 2)"#)
        );
        assert_eq!(verdict.max_abs_error, 2.0);
        assert_eq!(verdict.max_rel_error, 0.25);
    }

    #[test]
    fn a_status_difference_is_a_mismatch() {
        let error = Answer {
            status: 500,
            model_version: String::new(),
            outputs: vec![],
        };
        let verdict = compare_one(fp32_answer(&[1.0]), error, EXACT);
        assert_eq!(verdict.mismatch.as_deref(), Some("status 200 vs 500"));
    }

    #[test]
    fn model_versions_are_not_compared() {
        let primary = fp32_answer(&[1.0]);
        let mut mirror = primary.clone();
        mirror.model_version = "2".to_string();
        assert_eq!(compare_one(primary, mirror, EXACT).mismatch, None);
    }

    #[test]
    fn outputs_pair_by_name_and_unpaired_names_mismatch() {
        let out = |name: &str| tensor(name, "FP32", &[1], fp32(&[1.0]));
        let primary = answer(vec![out("A"), out("B")]);
        let reordered = answer(vec![out("B"), out("A")]);
        assert_eq!(
            compare_one(primary.clone(), reordered, EXACT).mismatch,
            None
        );

        let verdict = compare_one(primary, answer(vec![out("B"), out("C")]), EXACT);
        assert_eq!(
            verdict.mismatch.as_deref(),
            Some(r#"outputs missing from mirror: ["A"], only in mirror: ["C"]"#)
        );
    }

    #[test]
    fn datatype_and_shape_differences_mismatch() {
        let primary = fp32_answer(&[1.0, 2.0]);
        let mut other_type = primary.clone();
        other_type.outputs[0].datatype = "FP64".to_string();
        assert_eq!(
            compare_one(primary.clone(), other_type, EXACT)
                .mismatch
                .as_deref(),
            Some(r#"output "OUTPUT0": datatype FP32 vs FP64"#)
        );
        let mut other_shape = primary.clone();
        other_shape.outputs[0].shape = vec![2, 1];
        assert_eq!(
            compare_one(primary, other_shape, EXACT).mismatch.as_deref(),
            Some(r#"output "OUTPUT0": shape [1, 2] vs [2, 1]"#)
        );
    }

    #[test]
    fn half_and_bfloat16_are_decoded() {
        let halves = |datatype: &str, bits: &[u16]| {
            let data = TensorData::Raw(bits.iter().flat_map(|b| b.to_le_bytes()).collect());
            answer(vec![tensor("OUT", datatype, &[bits.len() as i64], data)])
        };
        let as_json = |values: Value| answer(vec![tensor("OUT", "FP16", &[5], json(values))]);
        // 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), 0.099975586 (0.1 rounded).
        let fp16 = halves("FP16", &[0x3c00, 0xc000, 0x7bff, 0x0001, 0x2e66]);
        let expected = json!([1.0, -2.0, 65504.0, 5.960464477539063e-8, 0.0999755859375]);
        assert_eq!(
            compare_one(fp16.clone(), as_json(expected), EXACT).mismatch,
            None
        );
        let off = json!([1.0, -2.0, 65504.0, 5.960464477539063e-8, 0.1]);
        assert!(compare_one(fp16, as_json(off), EXACT).mismatch.is_some());

        // 1.0, -2.0, 3.140625 (pi rounded to bfloat16).
        let bf16 = halves("BF16", &[0x3f80, 0xc000, 0x4049]);
        let mut expected = answer(vec![tensor(
            "OUT",
            "BF16",
            &[3],
            json(json!([1.0, -2.0, 3.140625])),
        )]);
        assert_eq!(
            compare_one(bf16.clone(), expected.clone(), EXACT).mismatch,
            None
        );
        expected.outputs[0].data = json(json!([1.0, -2.0, 3.13]));
        let verdict = compare_one(bf16, expected, EXACT);
        assert!(verdict.mismatch.is_some());
        assert!((verdict.max_abs_error - 0.010625).abs() < 1e-6);

        // Infinities and NaN, which are special exponents in FP16.
        let specials = halves("FP16", &[0x7c00, 0xfc00, 0x7e00]);
        let decoded: Vec<f64> = match &specials.outputs[0].data {
            TensorData::Raw(raw) => Elements::Raw {
                dtype: DType::F16,
                rest: raw,
            }
            .map(|e| match e {
                Element::Float(x) => x,
                other => panic!("{other:?}"),
            })
            .collect(),
            TensorData::Json(_) => unreachable!(),
        };
        assert_eq!(decoded[..2], [f64::INFINITY, f64::NEG_INFINITY]);
        assert!(decoded[2].is_nan());
    }

    fn raw_bytes(elements: &[&[u8]]) -> TensorData {
        let mut raw = Vec::new();
        for element in elements {
            raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
            raw.extend_from_slice(element);
        }
        TensorData::Raw(raw.into())
    }

    #[test]
    fn raw_bytes_compare_with_json_strings() {
        let raw = answer(vec![tensor(
            "OUT",
            "BYTES",
            &[3],
            raw_bytes(&[b"cat", b"", "é".as_bytes()]),
        )]);
        let same = answer(vec![tensor(
            "OUT",
            "BYTES",
            &[3],
            json(json!(["cat", "", "é"])),
        )]);
        assert_eq!(
            compare_one(raw.clone(), same, EXACT),
            compare_one(raw.clone(), raw.clone(), EXACT)
        );
        let other = answer(vec![tensor(
            "OUT",
            "BYTES",
            &[3],
            json(json!(["cat", "dog", "é"])),
        )]);
        assert_eq!(
            compare_one(raw.clone(), other, EXACT).mismatch.as_deref(),
            Some(r#"output "OUT" element 1: "" vs "dog""#)
        );
        let not_strings = answer(vec![tensor(
            "OUT",
            "BYTES",
            &[3],
            json(json!(["cat", 7, "é"])),
        )]);
        assert_eq!(
            compare_one(raw, not_strings, EXACT).mismatch.as_deref(),
            Some(r#"output "OUT" element 1: 7 is not a BYTES value"#)
        );
    }

    #[test]
    fn raw_and_json_fp32_compare_by_value() {
        let values = [0.1f32, -1.5, 3.0e-8, 123456.79];
        let raw = fp32_answer(&values);
        let as_json = answer(vec![tensor(
            "OUTPUT0",
            "FP32",
            &[1, 4],
            json(json!([0.1, -1.5, 3.0e-8, 123456.79])),
        )]);
        let verdict = compare_one(as_json.clone(), raw.clone(), EXACT);
        assert_eq!(verdict.mismatch, None);
        assert_eq!(verdict.max_abs_error, 0.0);
        assert_eq!(compare_one(raw, as_json, EXACT).mismatch, None);
    }

    #[test]
    fn json_values_of_the_wrong_kind_mismatch() {
        let primary = answer(vec![tensor(
            "OUT",
            "BOOL",
            &[2],
            json(json!([true, false])),
        )]);
        let mirror = answer(vec![tensor("OUT", "BOOL", &[2], json(json!([true, 0])))]);
        assert_eq!(
            compare_one(primary.clone(), mirror, EXACT)
                .mismatch
                .as_deref(),
            Some(r#"output "OUT" element 1: 0 is not a BOOL value"#)
        );
        let raw = answer(vec![tensor(
            "OUT",
            "BOOL",
            &[2],
            TensorData::Raw(Bytes::from_static(&[1, 0])),
        )]);
        assert_eq!(compare_one(primary, raw, EXACT).mismatch, None);
    }

    #[test]
    fn nan_equals_nan_and_infinities_only_themselves() {
        let nan = fp32_answer(&[f32::NAN, f32::INFINITY, 1.0]);
        let verdict = compare_one(nan.clone(), nan.clone(), EXACT);
        assert_eq!(verdict.mismatch, None);
        assert_eq!(verdict.max_abs_error, 0.0);

        let loose = Tolerance {
            absolute: 1e9,
            relative: 1e9,
        };
        let flipped = fp32_answer(&[f32::NAN, f32::NEG_INFINITY, 1.0]);
        assert!(compare_one(nan.clone(), flipped, loose).mismatch.is_some());
        let number = fp32_answer(&[0.0, f32::INFINITY, 1.0]);
        let verdict = compare_one(nan, number, loose);
        assert!(verdict.mismatch.is_some());
        assert_eq!(verdict.max_abs_error, 0.0);
    }

    #[test]
    fn data_that_does_not_fill_the_shape_mismatches() {
        let primary = fp32_answer(&[1.0, 2.0]);
        let mut truncated = primary.clone();
        truncated.outputs[0].data = TensorData::Raw(Bytes::from_static(&[0, 0, 128, 63, 0, 0]));
        assert_eq!(
            compare_one(primary.clone(), truncated, EXACT)
                .mismatch
                .as_deref(),
            Some(r#"output "OUTPUT0": mirror's 6 bytes of FP32 data do not hold shape [1, 2]"#)
        );
        let mut short_json = primary.clone();
        short_json.outputs[0].data = json(json!([1.0]));
        assert_eq!(
            compare_one(short_json, primary, EXACT).mismatch.as_deref(),
            Some(r#"output "OUTPUT0": primary has 1 JSON elements, shape [1, 2] needs 2"#)
        );

        let strings = answer(vec![tensor(
            "OUT",
            "BYTES",
            &[2],
            raw_bytes(&[b"ab", b"cd"]),
        )]);
        let mut cut = strings.clone();
        cut.outputs[0].data = TensorData::Raw(Bytes::from_static(&[
            2, 0, 0, 0, b'a', b'b', 9, 0, 0, 0, b'c',
        ]));
        assert!(compare_one(strings.clone(), cut, EXACT).mismatch.is_some());
        let mut extra = strings.clone();
        extra.outputs[0].data = raw_bytes(&[b"ab", b"cd", b"ef"]);
        assert!(compare_one(strings, extra, EXACT).mismatch.is_some());
    }

    #[test]
    fn answer_counts_must_agree() {
        let a = fp32_answer(&[1.0]);
        let verdict = compare(&[a.clone(), a.clone(), a.clone()], &[a.clone(), a], EXACT);
        assert_eq!(
            verdict.mismatch.as_deref(),
            Some("primary sent 3 answers, mirror 2")
        );
    }

    #[test]
    fn stream_mismatches_name_the_answer() {
        let a = fp32_answer(&[1.0]);
        let b = fp32_answer(&[2.0]);
        let verdict = compare(&[a.clone(), a.clone()], &[a, b], EXACT);
        assert_eq!(
            verdict.mismatch.as_deref(),
            Some(r#"answer 1: output "OUTPUT0" element 0: 1 vs 2 (error 1)"#)
        );
    }

    #[test]
    fn hostile_shapes_neither_panic_nor_allocate() {
        let huge = [1i64 << 62, 1 << 62];
        let hostile = answer(vec![tensor("OUT", "FP32", &huge, fp32(&[1.0]))]);
        let verdict = compare_one(hostile.clone(), hostile, EXACT);
        assert_eq!(
            verdict.mismatch.as_deref(),
            Some(r#"output "OUT": invalid shape [4611686018427387904, 4611686018427387904]"#)
        );

        // A count that fits u64 but not the data, for every representation.
        for (datatype, data) in [
            ("FP32", fp32(&[1.0])),
            ("BYTES", raw_bytes(&[b"x"])),
            ("BYTES", json(json!(["x"]))),
            ("CUSTOM", json(json!(["x"]))),
        ] {
            let hostile = answer(vec![tensor("OUT", datatype, &[1 << 62], data)]);
            assert!(compare_one(hostile.clone(), hostile, EXACT)
                .mismatch
                .is_some());
        }
        let negative = answer(vec![tensor("OUT", "FP32", &[-1], fp32(&[]))]);
        assert!(compare_one(negative.clone(), negative, EXACT)
            .mismatch
            .is_some());
    }

    #[test]
    fn unknown_datatypes_compare_exactly() {
        let raw = |bytes: &'static [u8]| {
            answer(vec![tensor(
                "OUT",
                "FP8",
                &[2],
                TensorData::Raw(Bytes::from_static(bytes)),
            )])
        };
        assert_eq!(
            compare_one(raw(&[1, 2]), raw(&[1, 2]), EXACT).mismatch,
            None
        );
        assert_eq!(
            compare_one(raw(&[1, 2]), raw(&[1, 3]), EXACT)
                .mismatch
                .as_deref(),
            Some(r#"output "OUT": FP8 data differs"#)
        );
        let as_json = |values: Value| answer(vec![tensor("OUT", "FP8", &[2], json(values))]);
        assert_eq!(
            compare_one(as_json(json!([1, 2])), as_json(json!([1, 2])), EXACT).mismatch,
            None
        );
        assert_eq!(
            compare_one(as_json(json!([1, 2])), as_json(json!([1, 3])), EXACT)
                .mismatch
                .as_deref(),
            Some(r#"output "OUT" element 1: 2 vs 3"#)
        );
        assert!(compare_one(raw(&[1, 2]), as_json(json!([1, 2])), EXACT)
            .mismatch
            .is_some());
    }
}
