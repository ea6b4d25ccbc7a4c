//! Checks, as a gRPC request body streams upstream, that every message names
//! its model the way the upstream's protobuf decoder will read it.
//!
//! Trident routes and authorises a call on the model name it peeks from the
//! start of the first message (`grpc::peek_model`), but the body is forwarded
//! while it arrives, so the peek cannot see the whole of it. A decoder keeps
//! the *last* occurrence of a field, and a stream carries many messages: a
//! second name later in a message, or a later message of a stream, could name
//! another model than the one Trident checked. This walker follows the
//! top-level protobuf fields of every message (inflating compressed ones),
//! skipping tensor bytes without holding them, and reports each message's
//! name once the message is whole; a name field seen twice in one message is
//! refused at once. The caller checks each name before the chunk that
//! completes the message is forwarded, so the upstream never receives a whole
//! message Trident did not agree to.

use std::io::{self, Write};

use flate2::write::{GzDecoder, ZlibDecoder};

use super::grpc::{Encoding, GrpcCode};
use super::name_problem;
use super::reply::ErrorReply;

/// The gRPC length prefix: a compressed-flag byte and a big-endian `u32` length.
const FRAME_HEADER: usize = 5;
/// The longest model name accepted; Triton's names are directory names.
const MAX_NAME: u64 = 4096;
/// A varint is at most ten bytes.
const MAX_VARINT: u8 = 10;

/// Why a body is refused, whatever the model it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Broken framing or protobuf, or a name no decoder would read as Trident does.
    Malformed(&'static str),
    /// The model-name field occurs more than once in one message: decoders keep the last.
    DuplicateName,
    /// A compressed message in an encoding Trident cannot inflate.
    UnreadableEncoding,
}

impl From<Violation> for ErrorReply {
    fn from(violation: Violation) -> Self {
        match violation {
            Violation::Malformed(why) => ErrorReply::new(
                400,
                GrpcCode::InvalidArgument,
                format!("malformed gRPC request: {why}"),
            ),
            Violation::DuplicateName => ErrorReply::new(
                400,
                GrpcCode::InvalidArgument,
                "the model name field occurs more than once in a request message",
            ),
            Violation::UnreadableEncoding => ErrorReply::new(
                400,
                GrpcCode::Unimplemented,
                "a compressed message's grpc-encoding is not one Trident reads \
                 (gzip, deflate, identity)",
            ),
        }
    }
}

/// Walks the messages of one gRPC request body, chunk by chunk.
pub struct ModelCheck {
    /// The field number of the method's model name.
    field: u64,
    encoding: Encoding,
    frame: Frame,
}

enum Frame {
    /// Between messages: the length prefix read so far.
    Prefix {
        bytes: [u8; FRAME_HEADER],
        have: usize,
    },
    /// Inside a message: its bytes still to come, and where they go.
    Body { remaining: usize, payload: Payload },
}

/// Where a message's bytes go: straight to the field walker, or through an inflater first.
enum Payload {
    Plain(Fields),
    Gzip(Box<GzDecoder<Fields>>),
    Deflate(Box<ZlibDecoder<Fields>>),
}

impl ModelCheck {
    /// A check of a body whose messages carry their model name in string field `field`,
    /// compressed (when flagged) with `encoding`.
    pub fn new(field: u32, encoding: Encoding) -> Self {
        ModelCheck {
            field: u64::from(field),
            encoding,
            frame: Frame::Prefix {
                bytes: [0; FRAME_HEADER],
                have: 0,
            },
        }
    }

    /// Back to the start of a body, for a retry that replays it from the first byte.
    pub fn reset(&mut self) {
        *self = ModelCheck::new(self.field as u32, self.encoding);
    }

    /// Takes the next body chunk. `check` gets each message's model name (`None`
    /// when absent or empty) as the message completes, and may refuse it.
    /// `end_of_stream`: no more chunks follow, so a message cut short is refused.
    ///
    /// An error is final: the body is not resynchronised after it.
    pub fn feed<E: From<Violation>>(
        &mut self,
        mut chunk: &[u8],
        end_of_stream: bool,
        mut check: impl FnMut(Option<&str>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !chunk.is_empty() {
            match &mut self.frame {
                Frame::Prefix { bytes, have } => {
                    let n = (FRAME_HEADER - *have).min(chunk.len());
                    bytes[*have..*have + n].copy_from_slice(&chunk[..n]);
                    *have += n;
                    chunk = &chunk[n..];
                    if *have == FRAME_HEADER {
                        let prefix = *bytes;
                        self.frame = self.start_message(prefix)?;
                    }
                }
                Frame::Body { remaining, payload } => {
                    let n = (*remaining).min(chunk.len());
                    payload.write(&chunk[..n])?;
                    *remaining -= n;
                    chunk = &chunk[n..];
                }
            }
            // A message may be empty, so this also follows a prefix.
            if let Frame::Body { remaining: 0, .. } = self.frame {
                let ended = std::mem::replace(
                    &mut self.frame,
                    Frame::Prefix {
                        bytes: [0; FRAME_HEADER],
                        have: 0,
                    },
                );
                if let Frame::Body { payload, .. } = ended {
                    check(payload.finish()?.as_deref())?;
                }
            }
        }
        if let Frame::Body { payload, .. } = &mut self.frame {
            payload.flush()?;
        }
        let between_messages = matches!(self.frame, Frame::Prefix { have: 0, .. });
        if end_of_stream && !between_messages {
            return Err(Violation::Malformed("body ends inside a gRPC message").into());
        }
        Ok(())
    }

    fn start_message(&self, prefix: [u8; FRAME_HEADER]) -> Result<Frame, Violation> {
        let [flag, a, b, c, d] = prefix;
        let remaining = u32::from_be_bytes([a, b, c, d]) as usize;
        let fields = Fields::new(self.field);
        let payload = match (flag, self.encoding) {
            (0, _) => Payload::Plain(fields),
            (1, Encoding::Gzip) => Payload::Gzip(Box::new(GzDecoder::new(fields))),
            (1, Encoding::Deflate) => Payload::Deflate(Box::new(ZlibDecoder::new(fields))),
            (1, Encoding::Identity) => {
                return Err(Violation::Malformed(
                    "compressed gRPC message without grpc-encoding",
                ))
            }
            (1, Encoding::Unsupported) => return Err(Violation::UnreadableEncoding),
            _ => return Err(Violation::Malformed("invalid gRPC compressed-flag byte")),
        };
        Ok(Frame::Body { remaining, payload })
    }
}

impl Payload {
    fn fields(&mut self) -> &mut Fields {
        match self {
            Payload::Plain(fields) => fields,
            Payload::Gzip(decoder) => decoder.get_mut(),
            Payload::Deflate(decoder) => decoder.get_mut(),
        }
    }

    /// Feeds message bytes.
    fn write(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let inflate = |decoder: &mut dyn Write, mut bytes: &[u8]| {
            while !bytes.is_empty() {
                match decoder.write(bytes) {
                    // The compressed stream ended before the message: a decoder
                    // reading several members would see more than this one.
                    Ok(0) => {
                        return Err(Violation::Malformed(
                            "bytes after the compressed gRPC message's end",
                        ))
                    }
                    Ok(n) => bytes = &bytes[n..],
                    Err(_) => return Err(Violation::Malformed("gRPC message does not decompress")),
                }
            }
            Ok(())
        };
        match self {
            Payload::Plain(fields) => fields.walk(bytes),
            Payload::Gzip(decoder) => inflate(decoder.as_mut(), bytes)?,
            Payload::Deflate(decoder) => inflate(decoder.as_mut(), bytes)?,
        }
        self.fields().violation()
    }

    /// Pushes what the inflater holds to the walker, so a chunk is judged on all it decompresses to.
    fn flush(&mut self) -> Result<(), Violation> {
        let flushed = match self {
            Payload::Plain(_) => Ok(()),
            Payload::Gzip(decoder) => decoder.flush(),
            Payload::Deflate(decoder) => decoder.flush(),
        };
        flushed.map_err(|_| Violation::Malformed("gRPC message does not decompress"))?;
        self.fields().violation()
    }

    /// The whole message is in: its model name.
    fn finish(mut self) -> Result<Option<String>, Violation> {
        let finished = match &mut self {
            Payload::Plain(_) => Ok(()),
            Payload::Gzip(decoder) => decoder.try_finish(),
            Payload::Deflate(decoder) => decoder.try_finish(),
        };
        finished.map_err(|_| Violation::Malformed("gRPC message does not decompress"))?;
        self.fields().finish()
    }
}

/// A varint being read a byte at a time.
#[derive(Default, Clone, Copy)]
struct Varint {
    value: u64,
    bytes: u8,
}

impl Varint {
    /// Takes one byte: the value once it is complete. Like prost, refuses a
    /// varint longer than ten bytes or overflowing 64 bits.
    fn push(&mut self, byte: u8) -> Result<Option<u64>, Violation> {
        if self.bytes == MAX_VARINT - 1 && byte > 1 {
            return Err(Violation::Malformed("invalid protobuf varint"));
        }
        self.value |= u64::from(byte & 0x7f) << (7 * u32::from(self.bytes));
        self.bytes += 1;
        Ok((byte & 0x80 == 0).then_some(self.value))
    }
}

/// Where the walk over a message's top-level fields is.
enum At {
    Key(Varint),
    /// Inside a varint value: its bytes so far.
    VarintValue(u8),
    /// Reading a length-delimited field's length.
    Length {
        number: u64,
        length: Varint,
    },
    /// Inside a value with `left` bytes to go: skipped, or kept when it is the model name.
    Value {
        left: u64,
        name: bool,
    },
}

/// Where a length-delimited value of `length` bytes starts the walk: at the next key when it is empty.
fn value(length: u64, name: bool) -> At {
    if length == 0 {
        At::Key(Varint::default())
    } else {
        At::Value { left: length, name }
    }
}

/// The walker over one message's top-level fields, fed its (decompressed) bytes.
struct Fields {
    field: u64,
    at: At,
    /// The model-name field's value, from its first byte on.
    name: Option<Vec<u8>>,
    /// The first thing wrong; the rest of the message is ignored.
    violated: Option<Violation>,
}

impl Fields {
    fn new(field: u64) -> Self {
        Fields {
            field,
            at: At::Key(Varint::default()),
            name: None,
            violated: None,
        }
    }

    fn violation(&mut self) -> Result<(), Violation> {
        self.violated.clone().map_or(Ok(()), Err)
    }

    fn walk(&mut self, bytes: &[u8]) {
        if self.violated.is_none() {
            if let Err(violation) = self.step(bytes) {
                self.violated = Some(violation);
            }
        }
    }

    fn step(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.at {
                // Values are taken in bulk: the tensors are most of a message.
                At::Value { left, name } => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    if let (true, Some(value)) = (*name, self.name.as_mut()) {
                        value.extend_from_slice(&bytes[..n]);
                    }
                    if *left == 0 {
                        self.at = At::Key(Varint::default());
                    }
                    bytes = &bytes[n..];
                    continue;
                }
                At::Key(key) => {
                    if let Some(key) = key.push(byte)? {
                        self.at = self.after_key(key)?;
                    }
                }
                At::VarintValue(read) => {
                    *read += 1;
                    if *read == MAX_VARINT && byte > 1 {
                        return Err(Violation::Malformed("invalid protobuf varint"));
                    }
                    if byte & 0x80 == 0 {
                        self.at = At::Key(Varint::default());
                    }
                }
                At::Length { number, length } => {
                    let number = *number;
                    if let Some(length) = length.push(byte)? {
                        self.at = self.after_length(number, length)?;
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
    }

    /// What follows a field's key, checked as prost checks it.
    fn after_key(&mut self, key: u64) -> Result<At, Violation> {
        if key > u64::from(u32::MAX) {
            return Err(Violation::Malformed("invalid protobuf key"));
        }
        let number = key >> 3;
        if number == 0 {
            return Err(Violation::Malformed("protobuf field number 0"));
        }
        let wire_type = key & 7;
        if number == self.field && wire_type != 2 {
            return Err(Violation::Malformed("the model name is not a string"));
        }
        match wire_type {
            0 => Ok(At::VarintValue(0)),
            1 => Ok(At::Value {
                left: 8,
                name: false,
            }),
            2 => Ok(At::Length {
                number,
                length: Varint::default(),
            }),
            5 => Ok(At::Value {
                left: 4,
                name: false,
            }),
            // Groups are obsolete, and a decoder reads the fields inside them its own way.
            _ => Err(Violation::Malformed("unsupported protobuf wire type")),
        }
    }

    fn after_length(&mut self, number: u64, length: u64) -> Result<At, Violation> {
        if number != self.field {
            return Ok(value(length, false));
        }
        if self.name.is_some() {
            return Err(Violation::DuplicateName);
        }
        if length > MAX_NAME {
            return Err(Violation::Malformed("model name too long"));
        }
        self.name = Some(Vec::with_capacity(length as usize));
        Ok(value(length, true))
    }

    /// The message ended: its model name, if it names one.
    fn finish(&mut self) -> Result<Option<String>, Violation> {
        if let Some(violation) = self.violated.take() {
            return Err(violation);
        }
        if !matches!(self.at, At::Key(Varint { bytes: 0, .. })) {
            return Err(Violation::Malformed("truncated protobuf field"));
        }
        let Some(name) = self.name.take().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let name =
            String::from_utf8(name).map_err(|_| Violation::Malformed("model name is not UTF-8"))?;
        match name_problem(&name) {
            Some(problem) => Err(Violation::Malformed(problem)),
            None => Ok(Some(name)),
        }
    }
}

/// The inflater writes what it decompresses here.
impl Write for Fields {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.walk(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
