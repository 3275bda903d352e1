//! Measures how the `logs` table's files would compress under other Parquet settings: reads
//! the Parquet files given (an hour's worth, say), merges and sorts them as compaction does,
//! and prints the bytes of each column and in all under each setting, beside `zstd -3` of the
//! raw messages. How compaction's settings were chosen (see `retention/src/compaction.rs`).
//!
//! ```text
//! cargo run --release -p sluice-retention --example encodings -- <file.parquet>...
//! ```

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::file::reader::FileReader;
use datafusion::parquet::file::serialized_reader::SerializedFileReader;
use datafusion::parquet::schema::types::ColumnPath;

fn encode(batch: &RecordBatch, properties: WriterProperties) -> Bytes {
    let mut buffer = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buffer, batch.schema(), Some(properties)).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
    Bytes::from(buffer)
}

/// Compressed bytes per column.
fn columns(bytes: &Bytes) -> Vec<(String, i64)> {
    let reader = SerializedFileReader::new(bytes.clone()).expect("reader");
    let metadata = reader.metadata();
    let mut sizes: Vec<(String, i64)> = Vec::new();
    for group in metadata.row_groups() {
        for column in group.columns() {
            let name = column.column_path().string();
            match sizes.iter_mut().find(|(known, _)| *known == name) {
                Some((_, size)) => *size += column.compressed_size(),
                None => sizes.push((name, column.compressed_size())),
            }
        }
    }
    sizes
}

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    assert!(!paths.is_empty(), "usage: encodings <file.parquet>...");
    let mut batches = Vec::new();
    for path in &paths {
        let bytes = Bytes::from(std::fs::read(path).expect("read"));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            batches.push(batch.expect("batch"));
        }
    }
    let schema = batches[0].schema();
    let merged = concat_batches(&schema, &batches).expect("concat");
    let sort = |names: &[&str]| {
        let columns: Vec<SortColumn> = names
            .iter()
            .map(|name| SortColumn {
                values: Arc::clone(merged.column_by_name(name).expect("column")),
                options: None,
            })
            .collect();
        take_record_batch(&merged, &lexsort_to_indices(&columns, None).expect("sort"))
            .expect("take")
    };
    let messages = merged
        .column_by_name("message")
        .expect("message")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("text")
        .clone();
    let mut raw = Vec::new();
    for index in 0..messages.len() {
        raw.extend_from_slice(messages.value(index).as_bytes());
        raw.push(b'\n');
    }
    let zstd3 = zstd_size(&raw, 3);
    println!(
        "{} rows, raw messages {} bytes, zstd -3 of them {} bytes ({:.3})",
        merged.num_rows(),
        raw.len(),
        zstd3,
        zstd3 as f64 / raw.len() as f64
    );

    let base = |level: i32| {
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).expect("level")))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(1 << 20))
    };
    let orders: [(&str, RecordBatch); 4] = [
        ("as written", merged.clone()),
        ("source, time", sort(&["source_id", "timestamp"])),
        (
            "source, pattern, time",
            sort(&["source_id", "pattern_id", "timestamp"]),
        ),
        ("pattern, time", sort(&["pattern_id", "timestamp"])),
    ];
    for (order, batch) in &orders {
        for level in [3, 9, 15] {
            for (name, properties) in [
                ("defaults", base(level).build()),
                (
                    "delta times, 8 MiB pages",
                    base(level)
                        .set_column_encoding(
                            ColumnPath::from("timestamp"),
                            Encoding::DELTA_BINARY_PACKED,
                        )
                        .set_column_dictionary_enabled(ColumnPath::from("timestamp"), false)
                        .set_column_encoding(
                            ColumnPath::from("sequence"),
                            Encoding::DELTA_BINARY_PACKED,
                        )
                        .set_column_dictionary_enabled(ColumnPath::from("sequence"), false)
                        .set_data_page_size_limit(8 << 20)
                        .set_dictionary_page_size_limit(8 << 20)
                        .build(),
                ),
                (
                    "+ messages without a dictionary",
                    base(level)
                        .set_column_encoding(
                            ColumnPath::from("timestamp"),
                            Encoding::DELTA_BINARY_PACKED,
                        )
                        .set_column_dictionary_enabled(ColumnPath::from("timestamp"), false)
                        .set_column_encoding(
                            ColumnPath::from("sequence"),
                            Encoding::DELTA_BINARY_PACKED,
                        )
                        .set_column_dictionary_enabled(ColumnPath::from("sequence"), false)
                        .set_column_dictionary_enabled(ColumnPath::from("message"), false)
                        .set_data_page_size_limit(8 << 20)
                        .set_dictionary_page_size_limit(8 << 20)
                        .build(),
                ),
            ] {
                let bytes = encode(batch, properties);
                let sizes = columns(&bytes);
                let detail: Vec<String> = sizes
                    .iter()
                    .map(|(column, size)| format!("{column} {size}"))
                    .collect();
                println!(
                    "{order:>22} | zstd {level:>2} | {name:<32} | {:>10} bytes, {:.3} of zstd -3 | {}",
                    bytes.len(),
                    bytes.len() as f64 / zstd3 as f64,
                    detail.join(", ")
                );
            }
        }
    }
}

fn zstd_size(data: &[u8], level: i32) -> usize {
    // In 64 MiB frames, as the bench compares.
    data.chunks(64 << 20)
        .map(|chunk| zstd::bulk::compress(chunk, level).expect("zstd").len())
        .sum()
}
