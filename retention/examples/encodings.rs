//! Measures how the `logs` table's files would compress under other Parquet settings: reads
//! the Parquet files given (an hour's worth, say), merges and sorts them as compaction does,
//! and prints the bytes of each column and in all under each setting (and the time it took),
//! beside `zstd -3` of the raw messages in that order. How compaction's settings were chosen (see `retention/src/compaction.rs`).
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

    let sorted = sort(&["source_id", "timestamp"]);
    let distinct = |name: &str| {
        let column = sorted.column_by_name(name).expect("column");
        let values = column.as_any().downcast_ref::<StringArray>().expect("text");
        let set: std::collections::HashSet<&str> = values.iter().flatten().collect();
        set.len() as u64
    };
    let candidate = |level: i32, message_level: i32, page: usize, ndv: bool| {
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).expect("level")))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(256 * 1024))
            .set_data_page_size_limit(page)
            .set_dictionary_page_size_limit(page)
            .set_column_compression(
                ColumnPath::from("message"),
                Compression::ZSTD(ZstdLevel::try_new(message_level).expect("level")),
            );
        for column in ["timestamp", "sequence"] {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(column), false)
                .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
        }
        for column in ["source_id", "instance_id"] {
            builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column), true);
            if ndv {
                builder = builder
                    .set_column_bloom_filter_max_ndv(ColumnPath::from(column), distinct(column));
            }
        }
        builder.build()
    };
    let by_pattern = sort(&["source_id", "pattern_id", "timestamp"]);
    let defaults = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(15).expect("level")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    for (name, batch, properties) in [
        ("defaults at zstd 15", &sorted, defaults),
        (
            "zstd 15, 8 MiB pages",
            &sorted,
            candidate(15, 15, 8 << 20, true),
        ),
        (
            "zstd 15, 32 MiB pages",
            &sorted,
            candidate(15, 15, 32 << 20, true),
        ),
        (
            "zstd 12, 8 MiB pages",
            &sorted,
            candidate(12, 12, 8 << 20, true),
        ),
        (
            "zstd 15, messages 16, 32 MiB pages",
            &sorted,
            candidate(15, 16, 32 << 20, true),
        ),
        (
            "by pattern, zstd 15, 8 MiB pages",
            &by_pattern,
            candidate(15, 15, 8 << 20, true),
        ),
    ] {
        let started = std::time::Instant::now();
        let bytes = encode(batch, properties);
        let elapsed = started.elapsed();
        let sizes = columns(&bytes);
        let detail: Vec<String> = sizes
            .iter()
            .map(|(column, size)| format!("{column} {size}"))
            .collect();
        println!(
            "{name:<40} | {:>10} bytes, {:.3} of zstd -3 | {:.1} s | {}",
            bytes.len(),
            bytes.len() as f64 / zstd3 as f64,
            elapsed.as_secs_f64(),
            detail.join(", ")
        );
    }
}

fn zstd_size(data: &[u8], level: i32) -> usize {
    // In 64 MiB frames, as the bench compares.
    data.chunks(64 << 20)
        .map(|chunk| zstd::bulk::compress(chunk, level).expect("zstd").len())
        .sum()
}
