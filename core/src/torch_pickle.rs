//! The pickle inside a zip-format `torch.save` file (`<name>/data.pkl`), read
//! without Python: enough of the pickle machine for what PyTorch writes (protocols
//! 2 to 5: dicts, ordered dicts, lists, tuples, numbers, strings, and tensors as
//! `_rebuild_tensor_v2` over persistent storage ids). Nothing is executed: a global
//! is only a name, and a call of a global this module does not know becomes an
//! opaque value, which is fine as long as nobody asks for its content.
//!
//! The tensors' bytes live in other zip records (`<name>/data/<key>`); this module
//! only describes them ([`TensorRef`]). `sen-train import` reads the records.

use std::collections::HashMap;
use std::fmt;

/// An object of the unpickled graph, by index ([`Pickle::get`]).
pub type Id = usize;

/// What a pickled object became.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (its little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Entries in insertion order (`dict` and `collections.OrderedDict` alike).
    Dict(Vec<(Id, Id)>),
    /// A class or function named by `GLOBAL`/`STACK_GLOBAL` (never imported).
    Global {
        module: String,
        name: String,
    },
    /// A storage named by a persistent id.
    Storage(StorageRef),
    Tensor(TensorRef),
    /// A call of a global this module does not model (e.g. an optimizer's
    /// scheduler class), kept by name so errors can say what it was.
    Opaque {
        module: String,
        name: String,
    },
}

/// Element types of PyTorch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// From a typed storage class name (`torch.HalfStorage` and the like).
    fn from_storage_class(name: &str) -> Option<DType> {
        Some(match name {
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

/// A storage: its record key (`data/<key>`), element type, the device it was saved
/// from, and its length in elements.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    pub location: String,
    pub numel: u64,
}

/// A tensor as a strided view of a storage (offset and strides in elements).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

impl TensorRef {
    pub fn numel(&self) -> u64 {
        self.size.iter().product()
    }

    /// Whether every element the view reaches lies inside its storage.
    pub fn fits_storage(&self) -> bool {
        if self.size.contains(&0) {
            return self.offset <= self.storage.numel;
        }
        let last = self
            .size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (n, s)| {
                (n - 1).checked_mul(*s).and_then(|d| acc.checked_add(d))
            });
        last.is_some_and(|l| l < self.storage.numel)
    }
}

/// Why a pickle could not be read: where (byte offset) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle byte {}: {}", self.at, self.message)
    }
}

impl std::error::Error for PickleError {}

/// An unpickled object graph.
#[derive(Debug)]
pub struct Pickle {
    objs: Vec<Obj>,
    root: Id,
}

/// The most objects one pickle may create (a state dict of ViT-B/16 with its
/// optimizer makes a few tens of thousands).
const MAX_OBJS: usize = 50_000_000;

/// Read one pickle from `bytes` (up to its STOP).
pub fn parse(bytes: &[u8]) -> Result<Pickle, PickleError> {
    Machine::new(bytes).run()
}

impl Pickle {
    pub fn root(&self) -> Id {
        self.root
    }

    pub fn get(&self, id: Id) -> &Obj {
        &self.objs[id]
    }

    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a dict whose keys are strings (others are skipped).
    pub fn str_entries(&self, dict: Id) -> Option<Vec<(&str, Id)>> {
        match self.get(dict) {
            Obj::Dict(entries) => Some(
                entries
                    .iter()
                    .filter_map(|(k, v)| self.as_str(*k).map(|k| (k, *v)))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// A dict's value under a string key.
    pub fn dict_get(&self, dict: Id, key: &str) -> Option<Id> {
        self.str_entries(dict)?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A short description of an object's kind, for error messages.
    pub fn kind(&self, id: Id) -> String {
        match self.get(id) {
            Obj::None => "None".into(),
            Obj::Bool(_) => "a bool".into(),
            Obj::Int(_) | Obj::BigInt(_) => "an int".into(),
            Obj::Float(_) => "a float".into(),
            Obj::Str(_) => "a string".into(),
            Obj::Bytes(_) => "bytes".into(),
            Obj::Tuple(_) => "a tuple".into(),
            Obj::List(_) => "a list".into(),
            Obj::Dict(_) => "a dict".into(),
            Obj::Global { module, name } => format!("the global {module}.{name}"),
            Obj::Storage(_) => "a storage".into(),
            Obj::Tensor(_) => "a tensor".into(),
            Obj::Opaque { module, name } => format!("a {module}.{name} object"),
        }
    }
}

/// The pickle machine: a stack of object ids over an arena, so a memoised object
/// that is filled later (a dict's items come after its `BINPUT`) is the same object
/// when fetched again.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            objs: vec![],
            stack: vec![],
            marks: vec![],
            memo: HashMap::new(),
        }
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            at: self.pos,
            message: message.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        match self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
        {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!(
                "needs {n} more bytes, {} left: the data ends early",
                self.data.len() - self.pos
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|b| *b == b'\n') else {
            return self.err("a GLOBAL name without its newline");
        };
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| PickleError {
            at: self.pos,
            message: "a GLOBAL name that is not UTF-8".into(),
        })?;
        self.pos += n + 1;
        Ok(s.to_string())
    }

    fn new_obj(&mut self, o: Obj) -> Result<Id, PickleError> {
        if self.objs.len() >= MAX_OBJS {
            return self.err(format!("more than {MAX_OBJS} objects"));
        }
        self.objs.push(o);
        Ok(self.objs.len() - 1)
    }

    fn push(&mut self, o: Obj) -> Result<(), PickleError> {
        let id = self.new_obj(o)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("an opcode needs a value, the stack is empty");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(id) if self.stack.len() > floor => Ok(*id),
            _ => self.err("an opcode needs a value, the stack is empty"),
        }
    }

    /// Everything above the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return self.err("an opcode needs a MARK, there is none");
        };
        Ok(self.stack.split_off(m))
    }

    fn str_obj(&mut self, b: &[u8]) -> Result<(), PickleError> {
        match std::str::from_utf8(b) {
            Ok(s) => self.push(Obj::Str(s.to_string())),
            Err(_) => self.err("a string that is not UTF-8"),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(id) => {
                self.stack.push(*id);
                Ok(())
            }
            None => self.err(format!("memo entry {key} fetched before it was stored")),
        }
    }

    fn run(mut self) -> Result<Pickle, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("pickle protocol {proto} (sen reads 2 to 5)"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        objs: self.objs,
                        root,
                    });
                }
                b'}' => self.push(Obj::Dict(vec![]))?,
                b']' => self.push(Obj::List(vec![]))?,
                b')' => self.push(Obj::Tuple(vec![]))?,
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Obj::Int(v as i64))?
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Obj::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.le()?);
                        if n < 0 {
                            return self.err("LONG4 with a negative length");
                        }
                        n as usize
                    };
                    let b = self.take(n)?;
                    let o = long(b);
                    self.push(o)?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Obj::Float(v))?
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let b = self.take(n)?;
                    self.str_obj(b)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.str_obj(b)?
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let b = self.take(usize::try_from(n).unwrap_or(usize::MAX))?;
                    self.str_obj(b)?
                }
                b'U' => {
                    // SHORT_BINSTRING: Python 2 str, read as text when it is UTF-8
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.str_obj(b)?
                }
                b'T' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let b = self.take(n)?;
                    self.str_obj(b)?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.le()?);
                    let b = self
                        .take(usize::try_from(n).unwrap_or(usize::MAX))?
                        .to_vec();
                    self.push(Obj::Bytes(b))?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Obj::Global { module, name })?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.objs[module].clone(), self.objs[name].clone()) {
                        (Obj::Str(module), Obj::Str(name)) => {
                            self.push(Obj::Global { module, name })?
                        }
                        _ => return self.err("STACK_GLOBAL of values that are not strings"),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_get(k)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(top)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.extend_list(list, vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend_list(list, items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("SETITEMS with a key and no value");
                    }
                    let dict = self.top()?;
                    self.set_items(dict, items)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let o = self.call(func, args, 0)?;
                    self.push(o)?
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); modelled as a call.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let o = self.call(cls, args, 0)?;
                    self.push(o)?
                }
                b'b' => {
                    // BUILD sets an object's attributes (an ordered dict's `_metadata`,
                    // an opaque object's state): nothing sen reads.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let o = self.persistent(pid)?;
                    self.push(o)?
                }
                other => {
                    self.pos -= 1;
                    return self.err(format!(
                        "opcode 0x{other:02x} is not one PyTorch writes (is this a torch.save file?)"
                    ));
                }
            }
        }
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>) -> Result<(), PickleError> {
        match &mut self.objs[list] {
            Obj::List(v) => {
                v.extend(items);
                Ok(())
            }
            // An opaque object's list items (e.g. a deque): not modelled.
            Obj::Opaque { .. } => Ok(()),
            _ => self.err("APPEND to something that is not a list"),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<Id>) -> Result<(), PickleError> {
        match &mut self.objs[dict] {
            Obj::Dict(v) => {
                v.extend(items.chunks(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            Obj::Opaque { .. } => Ok(()),
            _ => self.err("SETITEM on something that is not a dict"),
        }
    }

    fn tuple(&self, id: Id) -> Option<&[Id]> {
        match &self.objs[id] {
            Obj::Tuple(v) => Some(v),
            _ => None,
        }
    }

    fn int(&self, id: Id) -> Option<u64> {
        match self.objs[id] {
            Obj::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn ints(&self, id: Id) -> Option<Vec<u64>> {
        self.tuple(id)?.iter().map(|i| self.int(*i)).collect()
    }

    /// `func(*args)` for the globals PyTorch's state dicts are made of.
    fn call(&mut self, func: Id, args: Id, depth: usize) -> Result<Obj, PickleError> {
        let (module, name) = match &self.objs[func] {
            Obj::Global { module, name } => (module.clone(), name.clone()),
            _ => return self.err(format!("a call of {}", self.kind_of(func))),
        };
        let Some(a) = self.tuple(args).map(<[Id]>::to_vec) else {
            return self.err(format!("{module}.{name} called without an argument tuple"));
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") if a.is_empty() => {
                Ok(Obj::Dict(vec![]))
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.tensor(&name, &a),
            // A pickled nn.Parameter: (data, requires_grad, hooks).
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match a.first().map(|i| &self.objs[*i]) {
                    Some(Obj::Tensor(t)) => Ok(Obj::Tensor(t.clone())),
                    _ => self.err(format!("{name} of something that is not a tensor")),
                }
            }
            // A tensor subclass: (func, type, args, state); rebuild with func(*args).
            ("torch._tensor", "_rebuild_from_type_v2") if a.len() >= 3 => {
                if depth >= 4 {
                    return self.err("_rebuild_from_type_v2 nested more than 4 deep");
                }
                self.call(a[0], a[2], depth + 1)
            }
            _ => Ok(Obj::Opaque { module, name }),
        }
    }

    fn kind_of(&self, id: Id) -> String {
        match &self.objs[id] {
            Obj::Global { module, name } => format!("{module}.{name}"),
            other => format!("{other:?}").chars().take(40).collect(),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn tensor(&mut self, name: &str, a: &[Id]) -> Result<Obj, PickleError> {
        if a.len() < 4 {
            return self.err(format!(
                "{name} with {} arguments (needs 4 or more)",
                a.len()
            ));
        }
        let Obj::Storage(storage) = self.objs[a[0]].clone() else {
            return self.err(format!(
                "{name} of {} instead of a storage",
                self.kind_of(a[0])
            ));
        };
        let (Some(offset), Some(size), Some(stride)) =
            (self.int(a[1]), self.ints(a[2]), self.ints(a[3]))
        else {
            return self.err(format!(
                "{name}: offset, size and stride must be non-negative integers"
            ));
        };
        if size.len() != stride.len() {
            return self.err(format!(
                "{name}: {} sizes but {} strides",
                size.len(),
                stride.len()
            ));
        }
        let t = TensorRef {
            storage,
            offset,
            size,
            stride,
        };
        if !t.fits_storage() {
            return self.err(format!(
                "a tensor of size {:?} stride {:?} at offset {} reaches past its storage '{}' of {} elements",
                t.size, t.stride, t.offset, t.storage.key, t.storage.numel
            ));
        }
        Ok(Obj::Tensor(t))
    }

    /// `('storage', torch.<Type>Storage, key, location, numel)`.
    fn persistent(&mut self, pid: Id) -> Result<Obj, PickleError> {
        let parts = self.tuple(pid).map(<[Id]>::to_vec).unwrap_or_default();
        let text = |m: &Self, i: usize| match parts.get(i).map(|p| &m.objs[*p]) {
            Some(Obj::Str(s)) => Some(s.clone()),
            _ => None,
        };
        if parts.len() != 5 || text(self, 0).as_deref() != Some("storage") {
            return self.err("a persistent id that is not ('storage', type, key, location, numel)");
        }
        let dtype = match &self.objs[parts[1]] {
            Obj::Global { module, name } if module == "torch" => DType::from_storage_class(name),
            _ => None,
        };
        let Some(dtype) = dtype else {
            return self.err(format!(
                "storage of type {} (sen reads torch's typed storages)",
                self.kind_of(parts[1])
            ));
        };
        let key = match &self.objs[parts[2]] {
            Obj::Str(s) => s.clone(),
            Obj::Int(i) => i.to_string(),
            _ => return self.err("a storage key that is neither a string nor an int"),
        };
        let (Some(location), Some(numel)) = (text(self, 3), self.int(parts[4])) else {
            return self.err(format!("storage '{key}': bad location or length"));
        };
        Ok(Obj::Storage(StorageRef {
            key,
            dtype,
            location,
            numel,
        }))
    }
}

/// LONG1/LONG4: little-endian two's complement.
fn long(b: &[u8]) -> Obj {
    if b.is_empty() {
        return Obj::Int(0);
    }
    if b.len() > 8 {
        return Obj::BigInt(b.to_vec());
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 8];
    buf[..b.len()].copy_from_slice(b);
    Obj::Int(i64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny pickle writer for the shapes PyTorch emits (protocol 2).
    #[derive(Default)]
    struct W(Vec<u8>);
    impl W {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend(format!("{m}\n{n}\n").as_bytes());
            self
        }
        fn int(&mut self, v: u8) -> &mut Self {
            self.op(&[b'K', v])
        }
        /// `_rebuild_tensor_v2(('storage', torch.HalfStorage, key, 'cuda:0', numel), offset, size, stride, False, OrderedDict())`
        fn tensor(
            &mut self,
            key: &str,
            numel: u8,
            offset: u8,
            size: &[u8],
            stride: &[u8],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
            self.s("storage")
                .global("torch", "HalfStorage")
                .s(key)
                .s("cuda:0")
                .int(numel);
            self.op(b"tQ").int(offset).op(b"(");
            for v in size {
                self.int(*v);
            }
            self.op(b"t(");
            for v in stride {
                self.int(*v);
            }
            self.op(b"t")
                .op(&[0x89])
                .global("collections", "OrderedDict")
                .op(b")R")
                .op(b"tR")
        }
    }

    /// `{"model": OrderedDict(w=tensor, b=tensor view) + _metadata, "epoch": 3, "opt": opaque}`
    fn checkpoint() -> Vec<u8> {
        let mut w = W::default();
        w.op(&[0x80, 2]).op(b"}q\x00(").s("model");
        w.global("collections", "OrderedDict").op(b"q\x01)R(");
        w.s("w").tensor("0", 6, 0, &[2, 3], &[3, 1]);
        // a transposed view of the same storage, from offset 0 (Fortran order)
        w.s("b").tensor("0", 6, 0, &[3, 2], &[1, 3]);
        w.op(b"u}").s("_metadata").op(b"h\x01)R").op(b"sb");
        w.s("epoch").int(3);
        w.s("opt")
            .global("torch.optim.lr_scheduler", "Thing")
            .op(b")R}")
            .s("lr")
            .op(b"G");
        w.op(&0.5f64.to_be_bytes()).op(b"sb");
        w.op(b"u.");
        w.0
    }

    #[test]
    fn a_nested_checkpoint_is_read_with_its_tensors_and_the_rest_named() {
        let p = parse(&checkpoint()).unwrap();
        let model = p.dict_get(p.root(), "model").unwrap();
        let entries = p.str_entries(model).unwrap();
        assert_eq!(entries.len(), 2, "_metadata is an attribute, not an entry");
        let Obj::Tensor(w) = p.get(entries[0].1) else {
            panic!("{:?}", p.get(entries[0].1))
        };
        assert_eq!((w.size.clone(), w.stride.clone()), (vec![2, 3], vec![3, 1]));
        assert_eq!(w.storage.dtype, DType::F16);
        assert_eq!(w.storage.key, "0");
        let Obj::Tensor(b) = p.get(entries[1].1) else {
            panic!()
        };
        assert_eq!(b.stride, vec![1, 3]);
        assert_eq!(p.get(p.dict_get(p.root(), "epoch").unwrap()), &Obj::Int(3));
        let opt = p.dict_get(p.root(), "opt").unwrap();
        assert_eq!(p.kind(opt), "a torch.optim.lr_scheduler.Thing object");
    }

    #[test]
    fn a_memoised_dict_filled_later_is_the_same_object() {
        // d = {}; memo it; fill it; then a list holding the memo'd d twice.
        let mut w = W::default();
        w.op(&[0x80, 2])
            .op(b"]q\x00(}q\x01")
            .s("k")
            .int(7)
            .op(b"sh\x01e.");
        let p = parse(&w.0).unwrap();
        let Obj::List(items) = p.get(p.root()) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert_eq!(p.get(p.dict_get(items[1], "k").unwrap()), &Obj::Int(7));
    }

    #[test]
    fn longs_are_sign_extended() {
        assert_eq!(long(&[0xff]), Obj::Int(-1));
        assert_eq!(long(&[0x00, 0x80]), Obj::Int(-32768));
        assert_eq!(long(&[0x01, 0x00]), Obj::Int(1));
        assert_eq!(long(&[]), Obj::Int(0));
        assert!(matches!(long(&[1; 9]), Obj::BigInt(_)));
    }

    #[test]
    fn damaged_pickles_are_errors_with_a_position() {
        let good = checkpoint();
        // every truncation fails cleanly, never panics
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix of {n} bytes");
        }
        let e = parse(&[0x80, 2, b'}', 0xfe]).unwrap_err();
        assert_eq!(e.at, 3);
        assert!(e.message.contains("0xfe"), "{e}");
        let e = parse(&[0x80, 2, b'h', 9, b'.']).unwrap_err();
        assert!(e.message.contains("memo entry 9"), "{e}");
        let e = parse(b"\x80\x02s.").unwrap_err();
        assert!(e.message.contains("stack is empty"), "{e}");
    }

    #[test]
    fn a_view_past_its_storage_is_refused() {
        let mut w = W::default();
        w.op(&[0x80, 2])
            .tensor("0", 5, 0, &[2, 3], &[3, 1])
            .op(b".");
        let e = parse(&w.0).unwrap_err();
        assert!(
            e.message.contains("reaches past its storage '0' of 5"),
            "{e}"
        );
        let mut w = W::default();
        w.op(&[0x80, 2])
            .tensor("0", 6, 1, &[2, 3], &[3, 1])
            .op(b".");
        assert!(parse(&w.0).is_err(), "offset 1 reaches element 6");
        let mut w = W::default();
        w.op(&[0x80, 2])
            .tensor("0", 0, 0, &[0, 3], &[3, 1])
            .op(b".");
        assert!(parse(&w.0).is_ok(), "an empty tensor of an empty storage");
    }
}
