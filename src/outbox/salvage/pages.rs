//! Salvage's own reader of SQLite's database file format (the header, B-tree pages and their cells,
//! overflow chains, the freelist and the record encoding, as SQLite's "Database File Format" document
//! describes them), for what SQLite cannot reach: the leaf pages below a damaged interior page, and the
//! rows of a page SQLite rejects as a whole. It only reads and decides nothing: a row found here is taken
//! only if it has the shape of an outbox record and passes its checksum, which salvage checks.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The first byte of a B-tree page says what it is.
const INDEX_INTERIOR: u8 = 0x02;
const TABLE_INTERIOR: u8 = 0x05;
const INDEX_LEAF: u8 = 0x0a;
const TABLE_LEAF: u8 = 0x0d;

/// A database file read a page at a time.
pub(super) struct PageFile {
    file: File,
    page_size: usize,
    /// The bytes of a page that hold data: the page less the reserved bytes the header declares.
    usable: usize,
    pages: u32,
}

impl PageFile {
    pub(super) fn open(path: &Path) -> std::io::Result<PageFile> {
        let file = File::open(path)?;
        let mut header = [0u8; 100];
        file.read_exact_at(&mut header, 0)?;
        let page_size = match u16::from_be_bytes([header[16], header[17]]) {
            1 => 65536,
            size => usize::from(size),
        };
        let usable = page_size.saturating_sub(usize::from(header[20]));
        // The same limits SQLite sets: below them its own header arithmetic does not hold.
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() || usable < 480 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("page size {page_size} with {usable} usable bytes is not SQLite's"),
            ));
        }
        let pages = (file.metadata()?.len() / page_size as u64).min(u64::from(u32::MAX)) as u32;
        Ok(PageFile {
            file,
            page_size,
            usable,
            pages,
        })
    }

    /// Page `number` (from 1), or `None` if the file has no such page.
    fn page(&self, number: u32) -> Option<Vec<u8>> {
        if number == 0 || number > self.pages {
            return None;
        }
        let mut bytes = vec![0; self.page_size];
        let offset = u64::from(number - 1) * self.page_size as u64;
        self.file.read_exact_at(&mut bytes, offset).ok()?;
        Some(bytes)
    }

    /// The B-tree page `number`, if it reads as one.
    fn node(&self, number: u32) -> Option<(Vec<u8>, Node)> {
        let bytes = self.page(number)?;
        let node = Node::parse(&bytes, number, self.usable)?;
        Some((bytes, node))
    }

    /// Where the file's pages are: the leaves of each tree in `wanted` (table roots, in key order), with
    /// the pages in them that do not read as what their parent says they are, and the table leaf pages that
    /// no tree reaches and that are not free. `roots` are every tree's root (tables and indexes alike), so
    /// that a page of another tree is never taken for an orphan.
    pub(super) fn layout(&self, wanted: &[u32], roots: &[u32], freelist: Freelist) -> Layout {
        let mut reached = HashSet::new();
        // The list of tables, rooted on page 1, is a tree too.
        self.walk(1, &mut reached);
        let trees = (wanted.iter())
            .map(|root| self.walk(*root, &mut reached))
            .collect();
        for root in roots {
            self.walk(*root, &mut reached);
        }
        let free = match freelist {
            Freelist::FromHeader => self.freelist_from_header(),
            Freelist::Unknown => self.freelist_by_shape(&reached),
        };
        let orphans = (2..=self.pages)
            .filter(|number| !reached.contains(number) && !free.contains(number))
            .filter(|number| {
                self.node(*number)
                    .is_some_and(|(_, node)| node.kind == TABLE_LEAF)
            })
            .collect();
        Layout { trees, orphans }
    }

    /// Walks one B-tree from `root` depth first, children in order, never into a page already reached.
    fn walk(&self, root: u32, reached: &mut HashSet<u32>) -> Tree {
        let mut tree = Tree::default();
        let mut stack = vec![root];
        // Whether this is a table tree (rowids) or an index tree, as its root says.
        let mut table = None;
        while let Some(number) = stack.pop() {
            if !reached.insert(number) {
                continue;
            }
            let Some((bytes, node)) = self.node(number) else {
                tree.unreadable_pages += 1;
                continue;
            };
            let is_table = matches!(node.kind, TABLE_LEAF | TABLE_INTERIOR);
            if *table.get_or_insert(is_table) != is_table {
                tree.unreadable_pages += 1;
                continue;
            }
            match node.kind {
                TABLE_LEAF | INDEX_LEAF => tree.leaves.push(number),
                _ => {
                    stack.extend(node.right);
                    for cell in node.cells.iter().rev() {
                        stack.push(be_u32(&bytes, *cell));
                    }
                }
            }
        }
        tree
    }

    /// The freelist as the header lists it: trunk pages, each naming leaf pages and the next trunk.
    fn freelist_from_header(&self) -> HashSet<u32> {
        let mut free = HashSet::new();
        let Some(first) = self.page(1) else {
            return free;
        };
        let mut trunk = be_u32(&first, 32);
        while trunk != 0 && free.insert(trunk) {
            let Some(bytes) = self.page(trunk) else {
                break;
            };
            let leaves = (be_u32(&bytes, 4) as usize).min(self.usable / 4 - 2);
            free.extend((0..leaves).map(|i| be_u32(&bytes, 8 + 4 * i)));
            trunk = be_u32(&bytes, 0);
        }
        free
    }

    /// The freelist when the header that listed it was lost: pages that no tree reaches and that read as a
    /// trunk (a count that fits the page, naming only pages no tree reaches), with the pages they name. An
    /// orphaned leaf is named by nothing readable, so this does not take one for a free page.
    fn freelist_by_shape(&self, reached: &HashSet<u32>) -> HashSet<u32> {
        let mut free = HashSet::new();
        let unreached =
            |number: u32| (2..=self.pages).contains(&number) && !reached.contains(&number);
        for number in (2..=self.pages).filter(|number| unreached(*number)) {
            let Some(bytes) = self.page(number) else {
                continue;
            };
            let next = be_u32(&bytes, 0);
            let leaves = be_u32(&bytes, 4) as usize;
            if (next != 0 && !unreached(next)) || leaves > self.usable / 4 - 2 {
                continue;
            }
            let named: Vec<u32> = (0..leaves).map(|i| be_u32(&bytes, 8 + 4 * i)).collect();
            if named.iter().all(|leaf| unreached(*leaf) && *leaf != number) {
                free.insert(number);
                free.extend(named);
            }
        }
        free
    }

    /// The list of tables and indexes (`sqlite_schema`, rooted on page 1), as far as its rows read. Only a
    /// row's kind, name and root page matter here, so a row whose definition text is damaged still counts.
    /// If page 1's own header (where its rows are) is damaged, its rows are looked for byte by byte: a row
    /// of the list has a shape nothing else on that page has.
    pub(super) fn schema(&self) -> Vec<SchemaEntry> {
        let tree = self.walk(1, &mut HashSet::new());
        let rows = tree
            .leaves
            .iter()
            .filter_map(|leaf| self.rows(*leaf))
            .flatten();
        let entries: Vec<SchemaEntry> = rows
            .filter_map(|cell| match cell {
                Cell::Row {
                    values: Some(values),
                    ..
                } => SchemaEntry::from_values(&values),
                _ => None,
            })
            .collect();
        if !entries.is_empty() {
            return entries;
        }
        let Some(page) = self.page(1) else {
            return entries;
        };
        let mut found: Vec<SchemaEntry> = (100..self.usable)
            .filter_map(|at| match self.cell(&page, at) {
                Cell::Row {
                    values: Some(values),
                    ..
                } => SchemaEntry::from_values(&values),
                _ => None,
            })
            .collect();
        // An older copy of a row (a table altered since) may still lie in the page's free space; a name
        // found with two different roots tells nothing.
        let conflicting: HashSet<String> = (found.iter())
            .filter(|a| found.iter().any(|b| a.name == b.name && a.root != b.root))
            .map(|entry| entry.name.clone())
            .collect();
        let mut names = HashSet::new();
        found
            .retain(|entry| !conflicting.contains(&entry.name) && names.insert(entry.name.clone()));
        found
    }

    /// The highest seq table `name` gave out, from `sqlite_sequence`, if that reads.
    pub(super) fn last_seq(&self, schema: &[SchemaEntry], name: &str) -> Option<i64> {
        let root = schema
            .iter()
            .find(|entry| entry.table && entry.name == "sqlite_sequence")?
            .root;
        let tree = self.walk(root, &mut HashSet::new());
        let rows = tree
            .leaves
            .iter()
            .filter_map(|leaf| self.rows(*leaf))
            .flatten();
        rows.filter_map(|cell| match cell {
            Cell::Row {
                values: Some(values),
                ..
            } => match &values[..] {
                [Value::Text(table), Value::Integer(seq)] if table == name.as_bytes() => Some(*seq),
                _ => None,
            },
            _ => None,
        })
        .max()
    }

    /// The rows of table leaf page `number`, or `None` if it does not read as one.
    pub(super) fn rows(&self, number: u32) -> Option<Vec<Cell>> {
        let (bytes, node) = self.node(number)?;
        if node.kind != TABLE_LEAF {
            return None;
        }
        Some(node.cells.iter().map(|at| self.cell(&bytes, *at)).collect())
    }

    /// A table leaf cell: the payload size and rowid as varints, the payload's first part, and if it did
    /// not fit, the number of its first overflow page.
    fn cell(&self, page: &[u8], at: usize) -> Cell {
        let area = &page[at..self.usable];
        let Some((size, size_len)) = varint(area) else {
            return Cell::Unreadable;
        };
        let Some((rowid, rowid_len)) = varint(&area[size_len..]) else {
            return Cell::Unreadable;
        };
        let content = &area[size_len + rowid_len..];
        let values = u64::try_from(size)
            .ok()
            // No row is larger than the file it is in.
            .filter(|size| *size <= u64::from(self.pages) * self.page_size as u64)
            .and_then(|size| self.payload(content, size as usize))
            .and_then(|payload| record(&payload));
        Cell::Row { rowid, values }
    }

    /// A row's payload of `size` bytes, starting with `content` on the leaf page.
    fn payload(&self, content: &[u8], size: usize) -> Option<Vec<u8>> {
        let usable = self.usable;
        let most_local = usable - 35;
        let local = if size <= most_local {
            size
        } else {
            let least_local = (usable - 12) * 32 / 255 - 23;
            let local = least_local + (size - least_local) % (usable - 4);
            if local <= most_local {
                local
            } else {
                least_local
            }
        };
        let mut payload = content.get(..local)?.to_vec();
        if local == size {
            return Some(payload);
        }
        let mut next = u32::from_be_bytes(content.get(local..local + 4)?.try_into().ok()?);
        let mut followed = 0;
        while payload.len() < size {
            followed += 1;
            if followed > self.pages {
                return None;
            }
            let page = self.page(next)?;
            let take = (size - payload.len()).min(usable - 4);
            payload.extend_from_slice(&page[4..4 + take]);
            next = be_u32(&page, 0);
        }
        Some(payload)
    }
}

/// A table or index as the list of tables names it.
#[derive(Debug, Clone)]
pub(super) struct SchemaEntry {
    /// A table (with or without rowids), not an index.
    pub table: bool,
    pub name: String,
    pub root: u32,
    /// Its definition, if the text reads.
    pub sql: Option<String>,
}

impl SchemaEntry {
    /// A row of the list of tables: kind, name, table name, root page, definition.
    fn from_values(values: &[Value]) -> Option<SchemaEntry> {
        let [Value::Text(kind), Value::Text(name), Value::Text(_), Value::Integer(root), sql] =
            values
        else {
            return None;
        };
        if kind != b"table" && kind != b"index" {
            return None;
        }
        Some(SchemaEntry {
            table: kind == b"table",
            name: String::from_utf8(name.clone()).ok()?,
            root: u32::try_from(*root).ok().filter(|root| *root > 1)?,
            sql: match sql {
                Value::Text(sql) => String::from_utf8(sql.clone()).ok(),
                _ => None,
            },
        })
    }
}

/// Where the freelist is known from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freelist {
    /// The file's own header lists it.
    FromHeader,
    /// The header was lost (salvage wrote a new one), so trunk pages are recognised by their shape.
    Unknown,
}

/// What [`PageFile::layout`] found.
pub(super) struct Layout {
    /// One for each root asked for, in that order.
    pub trees: Vec<Tree>,
    /// Table leaf pages no tree reaches and no freelist holds: what was below a damaged interior page.
    pub orphans: Vec<u32>,
}

#[derive(Debug, Default)]
pub(super) struct Tree {
    /// Leaf pages, in key order.
    pub leaves: Vec<u32>,
    /// Pages the tree points to that do not read as a page of it; what was on them is lost.
    pub unreadable_pages: u64,
}

/// One row of a table leaf page.
#[derive(Debug)]
pub(super) enum Cell {
    /// `values` is `None` if the row's payload does not decode as a record.
    Row {
        rowid: i64,
        values: Option<Vec<Value>>,
    },
    /// Not even the rowid reads.
    Unreadable,
}

/// A column value as the record format stores it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Integer(i64),
    /// A floating-point number; no outbox column holds one, so its value does not matter here.
    Real,
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

/// A B-tree page's header: its kind, where its cells are, and an interior page's right-most child.
struct Node {
    kind: u8,
    cells: Vec<usize>,
    right: Option<u32>,
}

impl Node {
    fn parse(page: &[u8], number: u32, usable: usize) -> Option<Node> {
        // Page 1 starts with the 100-byte file header.
        let at = if number == 1 { 100 } else { 0 };
        let kind = *page.get(at)?;
        let header = match kind {
            TABLE_LEAF | INDEX_LEAF => 8,
            TABLE_INTERIOR | INDEX_INTERIOR => 12,
            _ => return None,
        };
        let count = usize::from(u16::from_be_bytes([page[at + 3], page[at + 4]]));
        let pointers = at + header;
        let content = pointers + 2 * count;
        if content > usable {
            return None;
        }
        let cells: Vec<usize> = (0..count)
            .map(|i| {
                usize::from(u16::from_be_bytes([
                    page[pointers + 2 * i],
                    page[pointers + 2 * i + 1],
                ]))
            })
            .collect();
        // Every cell has at least 4 bytes (an interior cell's child page number; a leaf cell's two varints
        // and more), and all of them lie after the pointer array.
        if cells
            .iter()
            .any(|cell| *cell < content || cell + 4 > usable)
        {
            return None;
        }
        let right = (header == 12).then(|| be_u32(page, at + 8));
        Some(Node { kind, cells, right })
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// SQLite's variable-length integer: 7 bits a byte while the high bit is set, all 8 bits of a ninth byte.
fn varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(9).enumerate() {
        if i == 8 {
            return Some((((value << 8) | u64::from(*byte)) as i64, 9));
        }
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((value as i64, i + 1));
        }
    }
    None
}

/// The values of a record: a header of serial types (its own length first), then the values in order.
fn record(payload: &[u8]) -> Option<Vec<Value>> {
    let (header_len, mut at) = varint(payload)?;
    let header_len = usize::try_from(header_len).ok()?;
    let header = payload.get(..header_len)?;
    let mut body = header_len;
    let mut values = Vec::new();
    while at < header_len {
        let (serial, len) = varint(&header[at..])?;
        at += len;
        let (size, kind) = match serial {
            0 | 8 | 9 => (0, serial),
            1..=4 => (serial as usize, 1),
            5 => (6, 1),
            6 | 7 => (8, serial),
            12.. if serial % 2 == 0 => (((serial - 12) / 2) as usize, 12),
            13.. => (((serial - 13) / 2) as usize, 13),
            // 10 and 11 are reserved; negative ones are no serial type.
            _ => return None,
        };
        let bytes = payload.get(body..body.checked_add(size)?)?;
        body += size;
        values.push(match kind {
            0 => Value::Null,
            8 => Value::Integer(0),
            9 => Value::Integer(1),
            1 | 6 => {
                // Big-endian two's complement, sign-extended from its width.
                let mut value = if bytes[0] & 0x80 != 0 { -1i64 } else { 0 };
                for byte in bytes {
                    value = (value << 8) | i64::from(*byte);
                }
                Value::Integer(value)
            }
            7 => Value::Real,
            12 => Value::Blob(bytes.to_vec()),
            _ => Value::Text(bytes.to_vec()),
        });
    }
    (at == header_len).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as SQLite writes them into a file, read back from its leaf page: every serial type an outbox
    /// column can have, and a row too large for its page, which continues on overflow pages.
    #[test]
    fn rows_read_back_as_sqlite_wrote_them() {
        let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Value>)> = vec![
            ("NULL, 0, 1, -1, 127", vec![Value::Null, Value::Integer(0), Value::Integer(1), Value::Integer(-1), Value::Integer(127)]),
            ("128, -129, 40000, -8388609", vec![Value::Integer(128), Value::Integer(-129), Value::Integer(40_000), Value::Integer(-8_388_609)]),
            ("1700000000000, -9223372036854775808", vec![Value::Integer(1_700_000_000_000), Value::Integer(i64::MIN)]),
            ("'key', X'00FF', ''", vec![Value::Text(b"key".to_vec()), Value::Blob(vec![0, 255]), Value::Text(Vec::new())]),
            ("2.5, 4294967295", vec![Value::Real, Value::Integer(4_294_967_295)]),
            ("?1", vec![Value::Blob(big.clone())]),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (n, (values_sql, values)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{n}.db"));
            {
                let connection = rusqlite::Connection::open(&path).unwrap();
                let columns: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
                connection
                    .execute_batch(&format!("CREATE TABLE t ({})", columns.join(", ")))
                    .unwrap();
                let insert = format!(
                    "INSERT INTO t (rowid, {}) VALUES (42, {values_sql})",
                    columns.join(", ")
                );
                if values_sql.contains("?1") {
                    connection.execute(&insert, [&big]).unwrap();
                } else {
                    connection.execute(&insert, []).unwrap();
                }
            }
            let root: u32 = rusqlite::Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            let file = PageFile::open(&path).unwrap();
            let rows = file.rows(root).expect("a table leaf");
            match &rows[..] {
                [Cell::Row {
                    rowid: 42,
                    values: Some(read),
                }] => assert_eq!(read, &values, "{values_sql}"),
                other => panic!("{values_sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_is_not_a_record_does_not_decode() {
        #[rustfmt::skip]
        let cases: [(&[u8], &str); 5] = [
            (&[], "nothing"),
            (&[0x02, 0x0a], "a reserved serial type"),
            (&[0x02, 0x17], "text longer than the payload"),
            (&[0x05, 0x01], "a header longer than the payload"),
            (&[0x81], "a varint cut short"),
        ];
        for (payload, what) in cases {
            assert_eq!(record(payload), None, "{what}");
        }
        assert_eq!(
            record(&[0x02, 0x15, b'a', b'b', b'c', b'd']),
            Some(vec![Value::Text(b"abcd".to_vec())])
        );
    }
}
