//! CIFAR-10's Python version: `cifar-10-python.tar.gz`, unpacking to `cifar-10-batches-py/`
//! (`data_batch_1` .. `data_batch_5`, `test_batch`, `batches.meta`), which is what torchvision's
//! `CIFAR10(root, download=True)` fetches and reads with `pickle.load(f, encoding="latin1")`.
//!
//! Each batch is a pickled dict: `data`, a NumPy `uint8` array of shape `(N, 3072)` (each row
//! 1024 red, 1024 green, then 1024 blue bytes, row by row: the binary version's layout), and
//! `labels`, a list of `N` ints (or, in batches pickled anew, a NumPy integer array, which
//! torchvision reads alike). `batches.meta` holds `label_names`. The pickles are decoded by
//! `serde-pickle`, which builds values and never runs code: NumPy's reconstruction calls stay
//! unresolved and only their arguments and state are read.

use crate::InMemory;
use anyhow::{bail, ensure, Context, Result};
use serde_pickle::{DeOptions, HashableValue, Value};

/// The train batch files, as in the official archive.
pub(crate) const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
];
/// The test batch file.
pub(crate) const TEST_BATCH: &str = "test_batch";
/// The class names' file.
pub(crate) const META: &str = "batches.meta";
/// The folder the official archive unpacks to.
pub(crate) const DIR: &str = "cifar-10-batches-py";

/// Bytes per image: 3x32x32.
const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes beyond which a file is no CIFAR-10 Python batch (each official one holds 10,000 images
/// in about 31 MB): 100,000 images and their names. The file is refused before it is read.
pub(crate) const MAX_BATCH_BYTES: u64 = 100_000 * (IMAGE_BYTES as u64 + 64);

/// Decodes the pickle in `bytes`, with the type codes of the NumPy dtypes it builds; `name`
/// identifies the file in errors.
fn unpickle(bytes: &[u8], name: &str) -> Result<(Value, Vec<String>)> {
    ensure!(
        matches!(bytes.first(), Some(0x80 | b'(' | b'}')),
        "{name}: not a pickle (CIFAR-10's Python version pickles each batch; this file starts \
         with {:02x?})",
        &bytes[..bytes.len().min(4)]
    );
    let dtypes = check_shape(bytes, name)?;
    // `keep_restore_state`: an unresolved call (NumPy's `_frombuffer`, protocol 5) keeps its
    // arguments, where the array's bytes are; `_reconstruct` is followed by its state anyway.
    let options = DeOptions::new()
        .replace_unresolved_globals()
        .keep_restore_state();
    let value = serde_pickle::value_from_slice(bytes, options).map_err(|e| match bytes[0] {
        0x80 => anyhow::anyhow!("{name}: not a readable pickle ({e})"),
        _ => anyhow::anyhow!(
            "{name}: not a readable pickle ({e}); it is of protocol 0 or 1, whose escaped text \
             strings are not all read here: pickle it again with protocol 2 or higher, as the \
             official files are (pickle.dump(batch, f, protocol=2))"
        ),
    })?;
    Ok((value, dtypes))
}

/// Nesting beyond which a pickle is no CIFAR-10 batch (the official ones nest 4 deep).
const MAX_DEPTH: u64 = 32;
/// Values beyond which a pickle is no CIFAR-10 batch (the official ones hold about 20,000: a
/// label and a file name an image).
const MAX_VALUES: u64 = 1_000_000;
/// Opcodes beyond which a pickle is no CIFAR-10 batch (the official ones have about 30,000).
const MAX_OPS: usize = 4_000_000;
/// Bytes beyond which a scalar repeated by reference is no part of a CIFAR-10 batch (they
/// repeat short names only).
const MAX_REPEATED: u64 = 64;
/// Bytes beyond which a sealed container repeated by reference is no part of a CIFAR-10 batch
/// (NumPy repeats a dtype, `(0,)` and an encoding call: 64 to 80).
const MAX_SEALED: u64 = 128;
/// Bytes of repeated scalars beyond which a pickle is no CIFAR-10 batch.
const MAX_COPIED: u64 = 1 << 20;
/// Lists, dicts, tuples and calls beyond which a pickle is no CIFAR-10 batch (the official ones
/// make about 30).
const MAX_CONTAINERS: usize = 10_000;

/// Walks the pickle's opcodes, keeping only which containers hold which, so that a file that
/// would exhaust the decoder is refused before it is decoded: nesting deeper than [`MAX_DEPTH`]
/// (the decoder recurses), or more than [`MAX_VALUES`] values once repeated references are
/// expanded (a few hundred bytes of back-references can stand for billions of values).
/// Gives the type codes of the NumPy dtypes the pickle builds (`numpy.dtype("u1", ...)`), which
/// the decoder drops.
fn check_shape(bytes: &[u8], name: &str) -> Result<Vec<String>> {
    /// A stack or memo entry: a scalar (its size in bytes), a scalar fetched from the memo
    /// (which the decoder copies), a short text (an index into `words`; fetched from the memo
    /// or not), `numpy.dtype`, or a container (an index into `nodes`).
    #[derive(Clone, Copy, PartialEq)]
    enum Item {
        Leaf(u64),
        Copy(u64),
        Word(usize, bool),
        Dtype,
        Node(usize),
    }
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut memoized: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut ops = 0usize;
    let mut dtypes: Vec<String> = Vec::new();
    // Bytes of scalars the decoder copies from the memo, in all.
    let mut copied = 0u64;
    /// A container: how many scalars it holds directly (and their bytes, a copied container's
    /// in all), which containers, its first item, and whether it is sealed (a tuple or a
    /// call's result: nothing is added to it later).
    #[derive(Default)]
    struct Node {
        leaves: u64,
        leaf_bytes: u64,
        children: Vec<usize>,
        first: Option<Item>,
        second: Option<Item>,
        sealed: bool,
        /// For a `numpy.dtype(...)` call, its code's index in `dtypes`.
        dtype: Option<usize>,
    }
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<Item> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Item> = std::collections::HashMap::new();
    let mut pos = 0usize;
    let unreadable = |what: &str, at: usize| -> anyhow::Error {
        anyhow::anyhow!("{name}: not a readable pickle ({what} at offset {at})")
    };
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        let start = *pos;
        let end = start.checked_add(n).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| unreadable("cut short", start))?;
        *pos = end;
        Ok(&bytes[start..end])
    };
    let uint = |b: &[u8]| {
        b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    };
    let line = |pos: &mut usize| -> Result<&[u8]> {
        let start = *pos;
        let len = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| unreadable("cut short", start))?;
        *pos = start + len + 1;
        Ok(&bytes[start..start + len])
    };
    let index = |text: &[u8]| {
        String::from_utf8_lossy(text)
            .trim()
            .parse()
            .unwrap_or(u64::MAX)
    };
    // Adds `items` to container `node`.
    let add = |nodes: &mut Vec<Node>, node: usize, items: &[Item]| {
        for item in items {
            if nodes[node].first.is_some() && nodes[node].second.is_none() {
                nodes[node].second = Some(*item);
            }
            nodes[node].first.get_or_insert(*item);
            match *item {
                Item::Node(child) => nodes[node].children.push(child),
                other => {
                    nodes[node].leaves += 1;
                    // At least a short scalar's size: a name's or a number's bytes are not kept.
                    nodes[node].leaf_bytes += match other {
                        Item::Copy(n) | Item::Leaf(n) => n.max(16),
                        _ => 16,
                    };
                }
            }
        }
    };
    let seal = |nodes: &mut Vec<Node>, node: Item, sealed: bool| {
        if let Item::Node(n) = node {
            nodes[n].sealed = sealed;
        }
    };
    // The bytes a sealed container of short scalars and at most three sealed containers
    // holds, in all (each container counted as a short scalar, a repeat inside it in full):
    // what the decoder copies where it is repeated; `None` for anything else, or more than
    // MAX_SEALED bytes. NumPy's repeats are `(0,)` (one container), a dtype or Python 3's
    // `_codecs.encode(...)` (a call and its arguments: two).
    fn small_sealed(nodes: &[Node], node: usize) -> Option<u64> {
        let (mut bytes, mut seen) = (0u64, 0usize);
        let mut todo = vec![node];
        while let Some(n) = todo.pop() {
            let node = &nodes[n];
            seen += 1;
            if !node.sealed || seen > 4 {
                return None;
            }
            bytes += 16 + node.leaf_bytes;
            todo.extend(&node.children);
            if bytes > MAX_SEALED {
                return None;
            }
        }
        Some(bytes)
    }
    let top = loop {
        let at = pos;
        // Every opcode makes at most one value: their number bounds the decoder's values.
        ops += 1;
        ensure!(
            ops <= MAX_OPS,
            "{name}: the pickle has more than {MAX_OPS} opcodes; a CIFAR-10 batch has about \
             three an image"
        );
        let op = take(&mut pos, 1)?[0];
        let underflow = || unreadable("stack underflow", at);
        let floor = marks.last().copied().unwrap_or(0);
        let pop = |stack: &mut Vec<Item>, n: usize| -> Result<Vec<Item>> {
            let keep = stack.len().checked_sub(n).filter(|&k| k >= floor);
            Ok(stack.split_off(keep.ok_or_else(underflow)?))
        };
        let new_node = |nodes: &mut Vec<Node>, items: &[Item]| -> Result<Item> {
            ensure!(
                nodes.len() < MAX_CONTAINERS,
                "{name}: the pickle makes more than {MAX_CONTAINERS} lists, dicts, tuples or \
                 objects (at offset {at}); a CIFAR-10 batch makes about 30"
            );
            nodes.push(Node::default());
            add(nodes, nodes.len() - 1, items);
            Ok(Item::Node(nodes.len() - 1))
        };
        match op {
            b'.' => {
                ensure!(marks.is_empty(), unreadable("a mark left open", at));
                break stack.pop().ok_or_else(underflow)?;
            }
            0x80 => drop(take(&mut pos, 1)?),
            0x95 => drop(take(&mut pos, 8)?),
            // Scalars with fixed-size arguments.
            b'N' | 0x88 | 0x89 => stack.push(Item::Leaf(0)),
            b'K' | b'M' | b'J' | b'G' => {
                let n = match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                };
                take(&mut pos, n)?;
                stack.push(Item::Leaf(n as u64))
            }
            // Scalars with counted arguments.
            b'U' | b'C' | 0x8c | 0x8a | b'T' | b'B' | b'X' | 0x8b | 0x8d | 0x8e | 0x96 => {
                let width = match op {
                    b'U' | b'C' | 0x8c | 0x8a => 1,
                    b'T' | b'B' | b'X' | 0x8b => 4,
                    _ => 8,
                };
                let n = usize::try_from(uint(take(&mut pos, width)?)).unwrap_or(usize::MAX);
                let text = take(&mut pos, n)?;
                if n <= 16 && matches!(op, b'U' | b'C' | 0x8c | b'T' | b'B' | b'X') {
                    words.push(text.to_vec());
                    stack.push(Item::Word(words.len() - 1, false))
                } else {
                    stack.push(Item::Leaf(n as u64))
                }
            }
            // Scalars with text arguments (protocol 0), and globals.
            b'I' | b'L' | b'F' | b'S' | b'V' | b'c' => {
                let first = line(&mut pos)?;
                let mut n = first.len();
                let mut dtype = false;
                if op == b'c' {
                    let second = line(&mut pos)?;
                    n += second.len();
                    dtype = first.starts_with(b"numpy") && second == b"dtype";
                }
                stack.push(if dtype {
                    Item::Dtype
                } else {
                    Item::Leaf(n as u64)
                })
            }
            0x93 => {
                let dtype = match pop(&mut stack, 2)?[..] {
                    [Item::Word(module, _), Item::Word(global, _)] => {
                        words[module].starts_with(b"numpy") && words[global] == b"dtype"
                    }
                    _ => false,
                };
                stack.push(if dtype { Item::Dtype } else { Item::Leaf(0) })
            }
            // Containers.
            b']' | b'}' | b')' | 0x8f => {
                let node = new_node(&mut nodes, &[])?;
                seal(&mut nodes, node, op == b')');
                stack.push(node)
            }
            b'(' => {
                // Each open mark costs the decoder a stack of its own.
                ensure!(
                    marks.len() < MAX_DEPTH as usize,
                    "{name}: the pickle opens more than {MAX_DEPTH} marks at once (at offset \
                     {at}); a CIFAR-10 batch opens 2"
                );
                marks.push(stack.len())
            }
            b't' | b'l' | b'd' | 0x91 | b'e' | b'u' | 0x90 | b'1' => {
                marks.pop().ok_or_else(underflow)?;
                let items = stack.split_off(floor.min(stack.len()));
                match op {
                    b'1' => {}
                    b't' | b'l' | b'd' | 0x91 => {
                        let node = new_node(&mut nodes, &items)?;
                        seal(&mut nodes, node, op == b't');
                        stack.push(node)
                    }
                    _ => match stack.last() {
                        Some(Item::Node(node)) => add(&mut nodes, *node, &items),
                        _ => return Err(unreadable("adding to no list, dict or set", at)),
                    },
                }
            }
            0x85..=0x87 => {
                let items = pop(&mut stack, usize::from(op - 0x84))?;
                let node = new_node(&mut nodes, &items)?;
                seal(&mut nodes, node, true);
                stack.push(node)
            }
            b'a' | b's' => {
                let items = pop(&mut stack, if op == b'a' { 1 } else { 2 })?;
                match stack.last() {
                    Some(Item::Node(node)) => add(&mut nodes, *node, &items),
                    _ => return Err(unreadable("adding to no list or dict", at)),
                }
            }
            b'0' => drop(pop(&mut stack, 1)?),
            // Calls: the decoder keeps at most their arguments, and an object its state.
            b'R' | 0x81 | 0x92 => {
                let items = pop(&mut stack, if op == 0x92 { 3 } else { 2 })?;
                let mut dtype = None;
                if let [Item::Dtype, Item::Node(args)] = items[..] {
                    if let Some(Item::Word(code, _)) = nodes[args].first {
                        dtypes.push(String::from_utf8_lossy(&words[code]).into_owned());
                        dtype = Some(dtypes.len() - 1);
                    }
                }
                let node = new_node(&mut nodes, &items[1..])?;
                seal(&mut nodes, node, true);
                if let Item::Node(n) = node {
                    nodes[n].dtype = dtype;
                }
                stack.push(node)
            }
            b'b' => {
                let items = pop(&mut stack, 2)?;
                // A dtype's state, `(3, byte order, ...)`: its byte order joins its code
                // (`>i8`), which the decoder drops with the rest.
                if let [Item::Node(object), Item::Node(state)] = items[..] {
                    if let (Some(i), Some(Item::Word(order, _))) =
                        (nodes[object].dtype, nodes[state].second)
                    {
                        if words[order] == b">" {
                            dtypes[i] = format!(">{}", dtypes[i]);
                        }
                    }
                }
                stack.push(items[1])
            }
            // The memo: a reference is the very container, which may still grow.
            b'p' | b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'p' => index(line(&mut pos)?),
                    b'q' => uint(take(&mut pos, 1)?),
                    b'r' => uint(take(&mut pos, 4)?),
                    _ => memo.len() as u64,
                };
                // The decoder leaves a reference in the stored value's place and copies the
                // value when a reference is stored again, which Python's pickler never does.
                let top = stack.last_mut().ok_or_else(underflow)?;
                let again = match *top {
                    Item::Copy(_) | Item::Word(_, true) => true,
                    Item::Node(node) => !memoized.insert(node),
                    _ => false,
                };
                ensure!(
                    !again,
                    "{name}: the pickle stores a value in its memo twice (at offset {at}), which \
                     Python's pickler never does"
                );
                // The decoder resolves references once the pickle is read, to what the key
                // holds last: a key stored twice would give them a value not checked here.
                ensure!(
                    !memo.contains_key(&key),
                    "{name}: the pickle stores two values under one memo key (at offset {at}), \
                     which Python's pickler never does"
                );
                memo.insert(key, *top);
                *top = match *top {
                    Item::Leaf(n) => Item::Copy(n),
                    Item::Word(w, _) => Item::Word(w, true),
                    other => other,
                };
            }
            b'g' | b'h' | b'j' => {
                let key = match op {
                    b'g' => index(line(&mut pos)?),
                    b'h' => uint(take(&mut pos, 1)?),
                    _ => uint(take(&mut pos, 4)?),
                };
                let item = memo
                    .get(&key)
                    .ok_or_else(|| unreadable("a missing memo entry", at))?;
                // Python's pickler refers back to objects it has written; a CIFAR-10 batch
                // repeats only short names (a NumPy global, an encoding) and small sealed
                // values made of them (NumPy's `(0,)`, Python 3's `_codecs.encode("b",
                // "latin1")` in protocol 2, a dtype), never a list, a dict, an array's bytes.
                // The decoder copies each repeat: more is refused.
                let (n, fetched) = match *item {
                    Item::Leaf(n) | Item::Copy(n) if n <= MAX_REPEATED => (n, Item::Copy(n)),
                    Item::Word(w, _) => (words[w].len() as u64, Item::Word(w, true)),
                    Item::Dtype => (0, Item::Dtype),
                    Item::Node(node) => match small_sealed(&nodes, node) {
                        Some(n) => (n, Item::Copy(n)),
                        None => bail!(
                            "{name}: the pickle repeats a container or a long value by reference \
                             (at offset {at}); a CIFAR-10 batch repeats only short names"
                        ),
                    },
                    _ => bail!(
                        "{name}: the pickle repeats a container or a long value by reference (at \
                         offset {at}); a CIFAR-10 batch repeats only short names"
                    ),
                };
                copied += n;
                ensure!(
                    copied <= MAX_COPIED,
                    "{name}: the pickle repeats values by reference more than a CIFAR-10 batch \
                     does ({MAX_COPIED} bytes in all, at offset {at})"
                );
                stack.push(fetched)
            }
            other => bail!(
                "{name}: not a readable pickle (opcode {other:#04x} at offset {at} is not one a \
                 CIFAR-10 batch uses)"
            ),
        }
    };
    let Item::Node(root) = top else {
        return Ok(dtypes);
    };
    // Each container's expanded size and depth, children first, without recursion. The
    // containers form a tree: each is added to one parent at most (a repeat by reference or
    // DUP is refused above).
    const UNSEEN: u64 = u64::MAX;
    const OPEN: u64 = u64::MAX - 1;
    let mut size = vec![UNSEEN; nodes.len()];
    let mut depth = vec![0u64; nodes.len()];
    let mut todo = vec![root];
    while let Some(&node) = todo.last() {
        if size[node] == UNSEEN {
            size[node] = OPEN;
            todo.extend(nodes[node].children.iter().filter(|&&c| size[c] == UNSEEN));
            continue;
        }
        todo.pop();
        if size[node] != OPEN {
            continue;
        }
        let children = &nodes[node].children;
        size[node] = children
            .iter()
            .fold(1 + nodes[node].leaves, |a, &c| a.saturating_add(size[c]));
        depth[node] = 1 + children.iter().map(|&c| depth[c]).max().unwrap_or(0);
        ensure!(
            depth[node] <= MAX_DEPTH,
            "{name}: the pickle nests values more than {MAX_DEPTH} deep; a CIFAR-10 batch nests \
             4 deep"
        );
        ensure!(
            size[node] <= MAX_VALUES,
            "{name}: the pickle holds more than {MAX_VALUES} values once its repeated references \
             are counted; a CIFAR-10 batch holds about two an image"
        );
    }
    Ok(dtypes)
}

/// The value under `key` in a pickled dict, whichever way the key was pickled (Python 2's
/// `str` arrives as bytes, Python 3's as text).
fn field<'a>(dict: &'a Value, key: &str) -> Option<&'a Value> {
    let Value::Dict(map) = dict else {
        return None;
    };
    map.get(&HashableValue::Bytes(key.as_bytes().to_vec()))
        .or_else(|| map.get(&HashableValue::String(key.to_string())))
}

/// The keys of a pickled dict, for errors.
fn keys(dict: &Value) -> String {
    let Value::Dict(map) = dict else {
        return String::new();
    };
    let names: Vec<String> = map
        .keys()
        .map(|k| match k {
            HashableValue::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            HashableValue::String(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    names.join(", ")
}

/// A pickled dict (the top of every file of the Python version).
fn top_dict(bytes: &[u8], name: &str, wanted: &str) -> Result<(Value, Vec<String>)> {
    let (value, dtypes) = unpickle(bytes, name)?;
    ensure!(
        matches!(value, Value::Dict(_)),
        "{name}: the pickle holds no dict but {}; CIFAR-10's Python version pickles a dict with \
         {wanted}",
        kind(&value)
    );
    Ok((value, dtypes))
}

/// A short description of a pickled value's type, for errors.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a str",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple, or an object (a NumPy array, say)",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    }
}

/// A pickled int that fits `usize`.
fn small_int(value: &Value) -> Option<usize> {
    match value {
        Value::I64(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// A pickled NumPy array's shape and bytes (C order), from what an unresolved reconstruction
/// leaves: `_reconstruct`'s state `(version, shape, dtype, is_fortran, bytes)` (protocols 0-4),
/// or `_frombuffer`'s arguments `(bytes, dtype, shape, order)` (protocol 5).
fn ndarray(value: &Value) -> Option<(Vec<usize>, bool, &[u8])> {
    let Value::Tuple(items) = value else {
        return None;
    };
    let shape = |v: &Value| -> Option<Vec<usize>> {
        match v {
            Value::Tuple(dims) => dims.iter().map(small_int).collect(),
            _ => None,
        }
    };
    fn data(v: &Value) -> Option<&[u8]> {
        match v {
            Value::Bytes(b) => Some(b.as_slice()),
            _ => None,
        }
    }
    match items.as_slice() {
        [_version, dims, _dtype, Value::Bool(fortran), bytes] => {
            Some((shape(dims)?, *fortran, data(bytes)?))
        }
        [bytes, _dtype, dims, Value::String(order)] => {
            Some((shape(dims)?, order == "F", data(bytes)?))
        }
        _ => None,
    }
}

/// The images of one batch's `data`: `(N, 3072)` uint8 in C order, or its Fortran-order copy.
fn images(data: &Value, name: &str) -> Result<(usize, Vec<u8>)> {
    let (shape, fortran, bytes) = ndarray(data).with_context(|| {
        format!(
            "{name}: `data` is {} but not a pickled NumPy array; CIFAR-10's Python version holds \
             a uint8 array of shape (N, 3072) there",
            kind(data)
        )
    })?;
    let [n, row] = shape[..] else {
        bail!(
            "{name}: `data` has shape {shape:?}, CIFAR-10's Python version has (N, 3072): one row \
             of 3x32x32 bytes an image"
        );
    };
    ensure!(
        row == IMAGE_BYTES && n > 0,
        "{name}: `data` has shape ({n}, {row}), CIFAR-10's Python version has (N, 3072) with N \
         at least 1: one row of 3x32x32 bytes an image"
    );
    ensure!(
        n.checked_mul(row) == Some(bytes.len()),
        "{name}: `data` holds {} bytes for shape ({n}, {row}): its type is not uint8 (one byte a \
         pixel), or the file is cut short",
        bytes.len()
    );
    if !fortran {
        return Ok((n, bytes.to_vec()));
    }
    // Column-major: element (i, j) at j * n + i.
    let mut rows = vec![0u8; n * row];
    for (j, column) in bytes.chunks_exact(n).enumerate() {
        for (i, &v) in column.iter().enumerate() {
            rows[i * row + j] = v;
        }
    }
    Ok((n, rows))
}

/// Reads one pickled batch (`data_batch_N`, `test_batch`) into 3x32x32 u8 images with labels in
/// `classes`' order; `name` identifies the file in errors.
///
/// # Errors
/// The bytes are not a pickle, hold no dict with `data` (a `(N, 3072)` uint8 array) and
/// `labels` (`N` ints below the class count), or are CIFAR-100's (`fine_labels`).
pub(crate) fn parse_batch(bytes: &[u8], name: &str, classes: Vec<String>) -> Result<InMemory> {
    let (dict, dtypes) = top_dict(bytes, name, "`data` and `labels`")?;
    if field(&dict, "fine_labels").is_some() {
        bail!(
            "{name}: a CIFAR-100 batch (it has `fine_labels`); this reads CIFAR-10's Python \
             version, whose batches have `labels`"
        );
    }
    let (data, labels) = match (field(&dict, "data"), field(&dict, "labels")) {
        (Some(d), Some(l)) => (d, l),
        _ => bail!(
            "{name}: the pickled dict has {}, not CIFAR-10's `data` and `labels`",
            match keys(&dict) {
                k if k.is_empty() => "no keys".to_string(),
                k => format!("the keys {k}"),
            }
        ),
    };
    // The decoder keeps an array's bytes and shape, not its type: the batch's arrays are
    // `data`, of uint8 (`u1`; `|u1` in older NumPy), and perhaps `labels`, of an integer type
    // (`self.targets.extend(entry["labels"])` in torchvision reads a list or an array alike),
    // told apart by their element sizes.
    let label_width = match labels {
        Value::List(_) => None,
        other => match ndarray(other) {
            Some((shape, _, b)) if shape.len() == 1 && shape[0] > 0 => Some(b.len() / shape[0]),
            Some((shape, ..)) => bail!(
                "{name}: `labels` is a NumPy array of shape {shape:?}; CIFAR-10's Python version \
                 has a list of N ints there (or a one-dimensional array of N ints)"
            ),
            None => bail!(
                "{name}: `labels` is {}, CIFAR-10's Python version has a list of ints there (or \
                 a one-dimensional NumPy array of ints)",
                kind(other)
            ),
        },
    };
    check_dtypes(&dtypes, label_width, name)?;
    let (n, images) = images(data, name)?;
    // Where the labels are an array: read as little-endian integers of its element size.
    let mut read_as = String::new();
    let labels: Vec<i128> = match labels {
        Value::List(labels) => {
            ensure!(
                labels.len() == n,
                "{name}: {} labels for {n} images",
                labels.len()
            );
            labels
                .iter()
                .enumerate()
                .map(|(i, label)| match label {
                    Value::I64(v) => Ok(i128::from(*v)),
                    other => bail!(
                        "{name}: label {i} is {}, not a class index below {}",
                        kind(other),
                        classes.len()
                    ),
                })
                .collect::<Result<_>>()?
        }
        other => {
            let (shape, _, b) = ndarray(other).context("checked above")?;
            ensure!(shape[0] == n, "{name}: {} labels for {n} images", shape[0]);
            let width = b.len() / n;
            ensure!(
                b.len() == n * width,
                "{name}: `labels` holds {} bytes for {n} labels: the file is cut short",
                b.len()
            );
            let signed = dtypes.iter().any(|d| dtype_code(d) == Some(('i', width)));
            read_as = format!(
                " (the array read as {}{}-bit little-endian integers)",
                if signed { "" } else { "unsigned " },
                8 * width
            );
            b.chunks_exact(width)
                .map(|v| {
                    let mut le = [0u8; 16];
                    le[..width].copy_from_slice(v);
                    let raw = u128::from_le_bytes(le);
                    let bits = 8 * width as u32;
                    if signed && raw >> (bits - 1) == 1 {
                        raw as i128 - (1i128 << bits)
                    } else {
                        raw as i128
                    }
                })
                .collect()
        }
    };
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, &label)| match u8::try_from(label) {
            Ok(l) if usize::from(l) < classes.len() => Ok(l),
            _ => bail!(
                "{name}: label {i} is {label}{read_as}, not a class index below {}",
                classes.len()
            ),
        })
        .collect::<Result<Vec<u8>>>()?;
    InMemory::new(images, labels, (3, 32, 32), classes).with_context(|| name.to_string())
}

/// A NumPy type code's kind and element size in bytes (`"u1"` is `('u', 1)`, `"<i8"` is
/// `('i', 8)`); `None` for a big-endian or unsized code.
fn dtype_code(code: &str) -> Option<(char, usize)> {
    let code = code.trim_start_matches(['<', '|', '=']);
    let mut chars = code.chars();
    let kind = chars.next()?;
    let width: usize = chars.as_str().parse().ok()?;
    Some((kind, width))
}

/// Checks the NumPy dtypes a batch builds: `data`'s uint8 and, where `labels` is an array of
/// `label_width`-byte elements, an integer type of that size.
fn check_dtypes(dtypes: &[String], label_width: Option<usize>, name: &str) -> Result<()> {
    let wanted = "CIFAR-10's Python version holds `data` as uint8 (\"u1\") and `labels` as a \
                  list of ints (or an integer array)";
    for d in dtypes {
        let fits = match (dtype_code(d), label_width) {
            (Some(('u', 1)), _) => true,
            (Some(('i' | 'u', w)), Some(lw)) => w == lw && w > 1,
            _ => false,
        };
        ensure!(fits, "{name}: holds a NumPy array of dtype {d:?}; {wanted}");
    }
    if let Some(w) = label_width {
        let typed =
            (dtypes.iter()).any(|d| matches!(dtype_code(d), Some(('i' | 'u', x)) if x == w));
        ensure!(
            [1, 2, 4, 8].contains(&w) && typed,
            "{name}: `labels` is an array of {w}-byte values{}; {wanted}",
            if typed { "" } else { " of no integer type" }
        );
    }
    Ok(())
}

/// The class names of a pickled `batches.meta` (its `label_names`); `name` identifies the file.
///
/// # Errors
/// Not a pickle, no `label_names` list of ten distinct names.
pub(crate) fn parse_meta(bytes: &[u8], name: &str) -> Result<Vec<String>> {
    let (dict, _) = top_dict(bytes, name, "`label_names`")?;
    let Some(Value::List(list)) = field(&dict, "label_names") else {
        bail!(
            "{name}: no list `label_names` in the pickled dict (its keys: {}); CIFAR-10's \
             batches.meta lists the ten class names there",
            keys(&dict)
        );
    };
    let names = list
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            // Python 2's `str`, read as torchvision reads it (`encoding="latin1"`).
            Value::Bytes(b) => Ok(b.iter().map(|&c| char::from(c)).collect()),
            Value::String(s) => Ok(s.clone()),
            other => bail!("{name}: class name {i} is {}, not a string", kind(other)),
        })
        .collect::<Result<Vec<String>>>()?;
    crate::cifar::check_class_names(names, name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Appends a Python 2 `str` shorter than 256 bytes (SHORT_BINSTRING).
    fn short(p: &mut Vec<u8>, s: &[u8]) {
        p.push(b'U');
        p.push(s.len() as u8);
        p.extend_from_slice(s);
    }

    /// A batch pickled as the official files are (Python 2's cPickle, protocol 2, NumPy's
    /// `_reconstruct` and `str` data); `fortran` stores the array column-major.
    pub(crate) fn python2_batch(images: &[u8], labels: &[u8], fortran: bool) -> Vec<u8> {
        let n = images.len() / IMAGE_BYTES;
        let mut p = vec![0x80, 2, b'}', b'(']; // PROTO 2, EMPTY_DICT, MARK
        let int = |p: &mut Vec<u8>, v: i32| {
            p.push(b'J');
            p.extend_from_slice(&v.to_le_bytes());
        };
        short(&mut p, b"batch_label");
        short(&mut p, b"testing batch 1 of 1");
        short(&mut p, b"labels");
        p.extend_from_slice(b"]("); // EMPTY_LIST, MARK
        for &l in labels {
            p.extend_from_slice(&[b'K', l]);
        }
        p.push(b'e'); // APPENDS
        short(&mut p, b"data");
        p.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n");
        p.extend_from_slice(&[b'K', 0, 0x85]); // (0,)
        short(&mut p, b"b");
        p.extend_from_slice(&[0x87, b'R', b'(']); // TUPLE3, REDUCE, MARK
        p.extend_from_slice(&[b'K', 1]);
        int(&mut p, n as i32);
        p.extend_from_slice(&[b'M', 0x00, 0x0c, 0x86]); // 3072, TUPLE2
        p.extend_from_slice(b"cnumpy\ndtype\n");
        short(&mut p, b"u1");
        p.extend_from_slice(&[b'K', 0, b'K', 1, 0x87, b'R', b'(', b'K', 3]);
        short(&mut p, b"|");
        p.extend_from_slice(b"NNN");
        int(&mut p, -1);
        int(&mut p, -1);
        p.extend_from_slice(&[b'K', 0, b't', b'b']); // TUPLE, BUILD
        p.push(if fortran { 0x88 } else { 0x89 });
        let data: Vec<u8> = if fortran {
            (0..IMAGE_BYTES)
                .flat_map(|j| (0..n).map(move |i| (i, j)))
                .map(|(i, j)| images[i * IMAGE_BYTES + j])
                .collect()
        } else {
            images.to_vec()
        };
        p.push(b'T'); // BINSTRING
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        p.extend_from_slice(&data);
        p.extend_from_slice(b"tb"); // TUPLE, BUILD
        p.extend_from_slice(b"u."); // SETITEMS, STOP
        p
    }

    /// `batches.meta` as the official file pickles it.
    pub(crate) fn python2_meta(names: &[&str]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'('];
        short(&mut p, b"num_cases_per_batch");
        p.extend_from_slice(&[b'M', 0x10, 0x27]);
        short(&mut p, b"label_names");
        p.extend_from_slice(b"](");
        for name in names {
            short(&mut p, name.as_bytes());
        }
        p.push(b'e');
        short(&mut p, b"num_vis");
        p.extend_from_slice(&[b'M', 0x00, 0x0c]);
        p.extend_from_slice(b"u.");
        p
    }

    /// A batch as Python 3 pickles NumPy's array with protocol 5 in band (`_frombuffer` with a
    /// `bytearray`), keys as `str`.
    fn protocol5_batch(images: &[u8], labels: &[u8]) -> Vec<u8> {
        let text = |p: &mut Vec<u8>, s: &str| {
            p.push(0x8c); // SHORT_BINUNICODE
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        };
        let mut p = vec![0x80, 5, b'}', b'('];
        text(&mut p, "labels");
        p.extend_from_slice(b"](");
        for &l in labels {
            p.extend_from_slice(&[b'K', l]);
        }
        p.push(b'e');
        text(&mut p, "data");
        p.push(0x8c);
        p.push(b"numpy.core.numeric".len() as u8);
        p.extend_from_slice(b"numpy.core.numeric");
        text(&mut p, "_frombuffer");
        p.push(0x93); // STACK_GLOBAL
        p.push(b'('); // MARK: the arguments (buffer, dtype, shape, order)
        p.push(0x96); // BYTEARRAY8
        p.extend_from_slice(&(images.len() as u64).to_le_bytes());
        p.extend_from_slice(images);
        text(&mut p, "numpy");
        text(&mut p, "dtype");
        p.push(0x93);
        text(&mut p, "u1");
        p.extend_from_slice(&[0x89, 0x88, 0x87, b'R', b'(', b'K', 3]);
        text(&mut p, "|");
        p.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.push(b'J');
        p.extend_from_slice(&(labels.len() as i32).to_le_bytes());
        p.extend_from_slice(&[b'M', 0x00, 0x0c, 0x86]);
        text(&mut p, "C");
        p.extend_from_slice(b"tR"); // TUPLE (from the MARK), REDUCE
        p.extend_from_slice(b"u.");
        p
    }

    fn classes() -> Vec<String> {
        crate::dataset::class_names(&crate::cifar::CIFAR10_CLASSES)
    }

    fn sample(n: usize) -> (Vec<u8>, Vec<u8>) {
        let images: Vec<u8> = (0..n * IMAGE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
        (images, labels)
    }

    #[test]
    fn official_protocol_2_batches_read_as_the_binary_layout() -> Result<()> {
        use crate::Dataset;
        let (images, labels) = sample(3);
        for fortran in [false, true] {
            let batch = parse_batch(&python2_batch(&images, &labels, fortran), "b", classes())?;
            assert_eq!(batch.len(), 3);
            for i in 0..3 {
                assert_eq!(batch.label(i), usize::from(labels[i]));
                let image = batch.image(i)?;
                assert_eq!(image.shape(), (3, 32, 32));
                assert_eq!(
                    image.data,
                    &images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
                    "image {i}, fortran {fortran}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn protocol_5_batches_read_too() -> Result<()> {
        use crate::Dataset;
        let (images, labels) = sample(2);
        let batch = parse_batch(&protocol5_batch(&images, &labels), "b", classes())?;
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.label(1), usize::from(labels[1]));
        assert_eq!(batch.image(1)?.data, &images[IMAGE_BYTES..]);
        Ok(())
    }

    /// Batches pickled anew by NumPy 2.4 with `labels` as an array (`tools/cifar_label_arrays.py`
    /// writes them): integer arrays read as torchvision reads them, in protocols 2 (Python 3's
    /// form, with NumPy's globals, `(0,)` and an encoding call repeated by reference) to 5;
    /// float, big-endian, negative and two-dimensional labels refused, naming the file.
    #[test]
    fn label_arrays_read_as_torchvision_reads_them() -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let read = |case: &str| -> Result<InMemory> {
            let name = format!("cifar-labels-{case}.pkl");
            parse_batch(&std::fs::read(dir.join(&name))?, &name, classes())
        };
        let pixels: Vec<u8> = (0..2 * IMAGE_BYTES).map(|i| (i % 256) as u8).collect();
        for case in ["int64-p2", "int64-p5", "uint8-p4", "int16-p4"] {
            let batch = read(case).with_context(|| case.to_string())?;
            assert_eq!(batch.labels(), &[3, 9], "{case}");
            assert_eq!(batch.pixels(0)?, &pixels[..IMAGE_BYTES], "{case}");
            assert_eq!(batch.pixels(1)?, &pixels[IMAGE_BYTES..], "{case}");
        }
        let refused = |case: &str| format!("{:#}", read(case).unwrap_err());
        for (case, says) in [
            ("float64-p4", "of dtype \"f8\""),
            ("bigendian-p4", "of dtype \">i8\""),
            ("negative-p4", "label 0 is -1 (the array read as 64-bit"),
            ("column-p4", "`labels` is a NumPy array of shape [2, 1]"),
        ] {
            let e = refused(case);
            assert!(
                e.contains(&format!("cifar-labels-{case}.pkl")) && e.contains(says),
                "{e}"
            );
        }
        Ok(())
    }

    /// Small tuples may be repeated by reference (NumPy's pickles do), but not tuples of
    /// repeats of tuples, which double at each level (2^30 values in 200 bytes).
    #[test]
    fn nested_repeated_tuples_are_refused() {
        let mut p = vec![0x80, 2, b'K', 1, b'K', 1, 0x86, b'q', 0];
        for i in 0..30u8 {
            p.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        p.push(b'.');
        let e = format!("{:#}", parse_batch(&p, "f.pkl", classes()).unwrap_err());
        assert!(e.contains("f.pkl: the pickle repeats a container"), "{e}");
    }

    /// A chain of one-item tuples repeated by reference (each repeat would be copied whole by
    /// the decoder, 10^10 tuples for a 2 MB file; one alone nests 9,990 deep), and a memo key
    /// stored twice (references take what it holds last: the chain, never checked), are
    /// refused (a reviewer's files, made small).
    #[test]
    fn chains_of_tuples_and_reused_memo_keys_are_refused() {
        let mut chain = vec![0x80, 4, b')'];
        chain.extend(std::iter::repeat_n(0x85, 100)); // TUPLE1
        let mut repeated = chain.clone();
        repeated.extend_from_slice(&[0x94, b'0', b']', b'(']); // MEMOIZE, POP, list, MARK
        repeated.extend(std::iter::repeat_n([b'h', 0], 100).flatten());
        repeated.extend_from_slice(b"e.");
        let e = format!(
            "{:#}",
            parse_batch(&repeated, "f.pkl", classes()).unwrap_err()
        );
        assert!(e.contains("f.pkl: the pickle repeats a container"), "{e}");
        let mut reused = vec![0x80, 2, b']', b'(', b'K', 1, b'q', 0, b'h', 0];
        reused.extend_from_slice(&chain[2..]);
        reused.extend_from_slice(b"q\x000e.");
        let e = format!(
            "{:#}",
            parse_batch(&reused, "f.pkl", classes()).unwrap_err()
        );
        assert!(
            e.contains("f.pkl: the pickle stores two values under one memo key"),
            "{e}"
        );
    }

    #[test]
    fn meta_gives_the_class_names() -> Result<()> {
        let names = parse_meta(&python2_meta(&crate::cifar::CIFAR10_CLASSES), "m")?;
        assert_eq!(names, classes());
        let err = parse_meta(&python2_meta(&["a", "b"]), "m").unwrap_err();
        assert!(format!("{err:#}").contains("2 class names"), "{err:#}");
        Ok(())
    }

    #[test]
    fn malformed_batches_are_refused_naming_the_file() {
        let (images, labels) = sample(2);
        let good = python2_batch(&images, &labels, false);
        let err =
            |bytes: &[u8]| format!("{:#}", parse_batch(bytes, "f.pkl", classes()).unwrap_err());
        // Not a pickle.
        assert!(err(b"hello").contains("not a pickle"), "{}", err(b"hello"));
        // Cut short.
        let cut = err(&good[..good.len() / 2]);
        assert!(
            cut.contains("f.pkl") && cut.contains("not a readable pickle"),
            "{cut}"
        );
        // Another dtype than uint8 (the same bytes as int8, or as float32 in protocol 5).
        let retype = |mut bytes: Vec<u8>, from: &[u8], to: &[u8]| {
            let at = bytes
                .windows(from.len())
                .position(|w| w == from)
                .expect("dtype");
            bytes[at..at + to.len()].copy_from_slice(to);
            bytes
        };
        let int8 = retype(good.clone(), b"U\x02u1", b"U\x02i1");
        let e = err(&int8);
        assert!(e.contains("a NumPy array of dtype \"i1\""), "{e}");
        let float = retype(
            protocol5_batch(&images, &labels),
            b"\x8c\x02u1",
            b"\x8c\x02f4",
        );
        let e = err(&float);
        assert!(e.contains("a NumPy array of dtype \"f4\""), "{e}");
        // A label out of range.
        let bad = python2_batch(&images, &[1, 10], false);
        assert!(err(&bad).contains("label 1 is 10"), "{}", err(&bad));
        // Fewer labels than images.
        let short = python2_batch(&images, &[1], false);
        let e = err(&short);
        assert!(e.contains("1 labels for 2 images"), "{e}");
        // A value stored in the memo twice (the decoder copies it each time), or marks left
        // open (each costs the decoder a stack).
        let mut twice = vec![0x80, 2, b'B'];
        twice.extend_from_slice(&1000u32.to_le_bytes());
        twice.extend_from_slice(&[1; 1000]);
        twice.extend_from_slice(&[b'q', 0, b'q', 1, b'.']);
        let e = err(&twice);
        assert!(e.contains("stores a value in its memo twice"), "{e}");
        let marks = [&[0x80, 2, b'N'][..], &[b'('; 40], b"."].concat();
        let e = err(&marks);
        assert!(e.contains("opens more than 32 marks"), "{e}");
        let e = err(&[0x80, 2, b'N', b'(', b'.']);
        assert!(e.contains("a mark left open"), "{e}");
        // Not a dict at all: a pickled list.
        let list = err(&[0x80, 2, b']', b'.']);
        assert!(list.contains("no dict but a list"), "{list}");
        // Where the batch is hostile: nested beyond the decoder's stack, ...
        let n = 100_000;
        let deep = [&[0x80, 2][..], &vec![b']'; n], &vec![b'a'; n - 1], b"."].concat();
        let e = err(&deep);
        assert!(e.contains("the pickle makes more than 10000 lists"), "{e}");
        let deep = [&[0x80, 2][..], &[b']'; 100], &[b'a'; 99], b"."].concat();
        let e = err(&deep);
        assert!(e.contains("nests values more than 32 deep"), "{e}");
        // ... a few references standing for billions of values (each list holds the one before
        // twice), also when the lists are filled after they are referenced, ...
        let mut bomb = vec![0x80, 2, b']', b'q', 0, b'N', b'a'];
        for level in 1..=25u8 {
            let below = level - 1;
            bomb.extend_from_slice(&[b']', b'q', level, b'h', below, b'a', b'h', below, b'a']);
        }
        bomb.push(b'.');
        let e = err(&bomb);
        assert!(
            e.contains("repeats a container or a long value by reference"),
            "{e}"
        );
        let mut late = vec![0x80, 2];
        for level in 0..=25u8 {
            late.extend_from_slice(&[b']', b'q', level, b'0']);
        }
        for level in (1..=25u8).rev() {
            let below = level - 1;
            late.extend_from_slice(&[b'h', level, b'h', below, b'a', b'h', below, b'a', b'0']);
        }
        late.extend_from_slice(&[b'h', 0, b'N', b'a', b'0', b'h', 25, b'.']);
        let e = err(&late);
        assert!(
            e.contains("repeats a container or a long value by reference"),
            "{e}"
        );
        // ... a list holding itself, ...
        let e = err(&[0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.']);
        assert!(e.contains("repeats a container"), "{e}");
        // ... long bytes repeated (each repeat is a copy), by reference or by DUP (which
        // Python's pickler never writes), ...
        let mut long = vec![0x80, 2, b']', b'(', b'B'];
        long.extend_from_slice(&10_000u32.to_le_bytes());
        long.extend_from_slice(&[7; 10_000]);
        long.extend_from_slice(&[b'q', 0, b'h', 0, b'h', 0, b'e', b'.']);
        let e = err(&long);
        assert!(e.contains("repeats a container or a long value"), "{e}");
        let mut dup = long[..long.len() - 8].to_vec();
        dup.extend_from_slice(b"22e.");
        let e = err(&dup);
        assert!(
            e.contains("opcode 0x32") && e.contains("not one a CIFAR-10 batch uses"),
            "{e}"
        );
        // ... or many short names repeated.
        let mut names = vec![0x80, 2, b']', b'(', b'U', 64];
        names.extend_from_slice(&[b'x'; 64]);
        names.extend_from_slice(&[b'q', 0]);
        for _ in 0..20_000 {
            names.extend_from_slice(&[b'h', 0]);
        }
        names.extend_from_slice(b"e.");
        let e = err(&names);
        assert!(e.contains("repeats values by reference more than"), "{e}");
        // An array of 2^62 images: its byte count overflows.
        let array = Value::Tuple(vec![
            Value::I64(1),
            Value::Tuple(vec![Value::I64(1 << 62), Value::I64(3072)]),
            Value::None,
            Value::Bool(false),
            Value::Bytes(vec![0; 3072]),
        ]);
        let e = format!("{:#}", super::images(&array, "f.pkl").unwrap_err());
        assert!(
            e.contains("holds 3072 bytes for shape (4611686018427387904, 3072)"),
            "{e}"
        );
        // The meta file where a batch is expected.
        let meta = err(&python2_meta(&crate::cifar::CIFAR10_CLASSES));
        assert!(
            meta.contains("label_names") && meta.contains("not CIFAR-10's"),
            "{meta}"
        );
    }
}
