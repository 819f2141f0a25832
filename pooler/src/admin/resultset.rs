//! Result sets as the console sends them: RowDescription with PgBouncer's type OIDs, DataRows
//! in text format, CommandComplete, plus the NoticeResponse of SHOW HELP. Owns byte layouts;
//! which rows to send is the session's business.

use crate::protocol::{ErrorResponse, Severity};
use bytes::{BufMut, BytesMut};

/// Column types as PgBouncer declares them (`s`, `i`, `q`, `N`, `b`; `T` is text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int4,
    Int8,
    Numeric,
    Bytea,
}

impl ColumnType {
    pub fn oid(self) -> u32 {
        match self {
            ColumnType::Text => 25,
            ColumnType::Int4 => 23,
            ColumnType::Int8 => 20,
            ColumnType::Numeric => 1700,
            ColumnType::Bytea => 17,
        }
    }

    fn len(self) -> i16 {
        match self {
            ColumnType::Int4 => 4,
            ColumnType::Int8 => 8,
            _ => -1,
        }
    }
}

/// One column: its name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

pub const fn text(name: &'static str) -> Column {
    Column { name, ty: ColumnType::Text }
}
pub const fn int4(name: &'static str) -> Column {
    Column { name, ty: ColumnType::Int4 }
}
pub const fn int8(name: &'static str) -> Column {
    Column { name, ty: ColumnType::Int8 }
}
pub const fn numeric(name: &'static str) -> Column {
    Column { name, ty: ColumnType::Numeric }
}
pub const fn bytea(name: &'static str) -> Column {
    Column { name, ty: ColumnType::Bytea }
}

/// One cell in text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
}

impl From<&str> for Cell {
    fn from(v: &str) -> Cell {
        Cell::Text(v.to_string())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(v)
    }
}
impl From<Option<String>> for Cell {
    fn from(v: Option<String>) -> Cell {
        v.map_or(Cell::Null, Cell::Text)
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Cell {
        Cell::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Cell {
    fn from(v: u32) -> Cell {
        Cell::Int(v.into())
    }
}
impl From<u16> for Cell {
    fn from(v: u16) -> Cell {
        Cell::Int(v.into())
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Cell {
        Cell::Int(v)
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Cell {
        Cell::Int(v.into())
    }
}

/// A typed row of one SHOW command.
pub trait Row {
    const COLUMNS: &'static [Column];
    /// The cells in `COLUMNS` order.
    fn cells(&self) -> Vec<Cell>;
}

fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_u32(0);
    body(buf);
    let len = u32::try_from(buf.len() - start - 1).unwrap_or(u32::MAX);
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

pub fn write_row_description(columns: &[Column], buf: &mut BytesMut) {
    message(buf, b'T', |buf| {
        buf.put_u16(columns.len() as u16);
        for c in columns {
            put_cstr(buf, c.name);
            buf.put_u32(0);
            buf.put_u16(0);
            buf.put_u32(c.ty.oid());
            buf.put_i16(c.ty.len());
            buf.put_i32(-1);
            buf.put_u16(0);
        }
    });
}

pub fn write_data_row(cells: &[Cell], buf: &mut BytesMut) {
    message(buf, b'D', |buf| {
        buf.put_u16(cells.len() as u16);
        for cell in cells {
            match cell {
                Cell::Null => buf.put_i32(-1),
                Cell::Text(t) => {
                    buf.put_i32(i32::try_from(t.len()).unwrap_or(i32::MAX));
                    buf.put_slice(t.as_bytes());
                }
                Cell::Int(i) => {
                    let t = i.to_string();
                    buf.put_i32(t.len() as i32);
                    buf.put_slice(t.as_bytes());
                }
            }
        }
    });
}

pub fn write_command_complete(tag: &str, buf: &mut BytesMut) {
    message(buf, b'C', |buf| put_cstr(buf, tag));
}

pub fn write_empty_query_response(buf: &mut BytesMut) {
    message(buf, b'I', |_| {});
}

/// A NoticeResponse (severity NOTICE, SQLSTATE 00000) with a detail, as SHOW HELP sends.
pub fn write_notice(message_text: &str, detail: &str, buf: &mut BytesMut) {
    ErrorResponse::new(Severity::Notice, "00000", message_text).with_detail(detail).encode_notice(buf);
}

/// A whole SHOW answer: RowDescription, the rows, `CommandComplete SHOW`.
pub fn write_rows<R: Row>(rows: &[R], buf: &mut BytesMut) {
    write_row_description(R::COLUMNS, buf);
    for row in rows {
        write_data_row(&row.cells(), buf);
    }
    write_command_complete("SHOW", buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn encodings_parse_with_postgres_protocol() {
        let mut buf = BytesMut::new();
        write_row_description(&[text("database"), int4("cl_active"), numeric("total_xact_count")], &mut buf);
        write_data_row(&[Cell::from("app"), Cell::Int(3), Cell::Null], &mut buf);
        write_command_complete("SHOW", &mut buf);
        write_notice("Console usage", "\tSHOW HELP", &mut buf);
        write_empty_query_response(&mut buf);
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::RowDescription(body) => {
                use fallible_iterator::FallibleIterator;
                let fields: Vec<(String, u32, i16)> =
                    body.fields().map(|f| Ok((f.name().to_string(), f.type_oid(), f.type_size()))).collect().unwrap();
                assert_eq!(
                    fields,
                    vec![
                        ("database".into(), 25, -1),
                        ("cl_active".into(), 23, 4),
                        ("total_xact_count".into(), 1700, -1)
                    ]
                );
            }
            _ => panic!("expected RowDescription"),
        }
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::DataRow(row) => {
                use fallible_iterator::FallibleIterator;
                let ranges: Vec<Option<std::ops::Range<usize>>> = row.ranges().collect().unwrap();
                let values: Vec<Option<&[u8]>> = ranges.into_iter().map(|r| r.map(|r| &row.buffer()[r])).collect();
                assert_eq!(values, vec![Some(&b"app"[..]), Some(&b"3"[..]), None]);
            }
            _ => panic!("expected DataRow"),
        }
        assert!(matches!(Message::parse(&mut buf).unwrap(), Some(Message::CommandComplete(_))));
        assert!(matches!(Message::parse(&mut buf).unwrap(), Some(Message::NoticeResponse(_))));
        assert!(matches!(Message::parse(&mut buf).unwrap(), Some(Message::EmptyQueryResponse)));
        assert!(buf.is_empty());
    }
}
