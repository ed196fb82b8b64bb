//! `genesis export --format csv`: one RFC 4180 file per table, with the
//! same rows as the SQL export.

use super::*;

/// Writes one RFC 4180 CSV per table into `dir`, plus `schema.sql` with the
/// tables' DDL, so `\copy TABLE FROM 'DIR/TABLE.csv' csv header` loads them.
pub fn write_csv(store: &Store, dir: &Path, since_ms: Option<i64>) -> Result<ExportCounts> {
    std::fs::create_dir_all(dir)
        .map_err(|e| GenesisError::io(format!("creating {}", dir.display()), e))?;
    let schema_path = dir.join("schema.sql");
    std::fs::write(&schema_path, schema(store.host()))
        .map_err(|e| GenesisError::io(format!("writing {}", schema_path.display()), e))?;
    let mut counts = ExportCounts::default();
    for table in TABLES {
        let n = csv_file(dir, table, |emit| stream_rows(store, table, since_ms, emit))?;
        counts.add(table.source, n);
    }
    Ok(counts)
}

fn csv_file(
    dir: &Path,
    table: &Table,
    rows: impl FnOnce(&mut dyn FnMut(&[Field]) -> Result<()>) -> Result<()>,
) -> Result<u64> {
    let path = dir.join(format!("{}.csv", table.name));
    let io = |e: std::io::Error| GenesisError::io(format!("writing {}", path.display()), e);
    let file = File::create(&path).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let header: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    write!(out, "{}\r\n", header.join(",")).map_err(io)?;
    let mut count = 0;
    let mut line = String::new();
    rows(&mut |fields| {
        encode_row(&mut line, fields, ",", push_csv_field, "\r\n");
        count += 1;
        out.write_all(line.as_bytes()).map_err(io)
    })?;
    out.flush().map_err(io)?;
    Ok(count)
}

/// RFC 4180; an unquoted empty field is NULL to PostgreSQL, so every text
/// value is quoted (an empty string stays an empty string).
pub(super) fn push_csv_field(line: &mut String, field: &Field) {
    match field {
        Field::Null => {}
        Field::Text(s) => push_csv_quoted(line, s),
        Field::Json(j) => push_csv_quoted(line, &jsonb_safe(j)),
        other => line.push_str(&plain_value(other)),
    }
}

fn push_csv_quoted(line: &mut String, text: &str) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\"\""),
            '\0' => {}
            c => line.push(c),
        }
    }
    line.push('"');
}
