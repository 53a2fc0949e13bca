//! Columns to a record batch (zero-copy from the recorded buffers) and to Parquet bytes: zstd,
//! identity columns dictionary or delta encoded, column chunks encoded on balanced threads.

use std::path::PathBuf;
use std::sync::Arc;

use apexsim_systems::record::LapColumns;
use arrow::array::{
    Array, ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, compute_leaves,
};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::format::*;
use super::{ArchiveError, IDENTITY_COLUMNS, LapMeta, ZSTD_LEVEL};

/// Turns a lap's columns into one Arrow batch in the order of [`lap_schema`], moving the
/// buffers (no copy).
pub fn lap_batch(meta: &LapMeta, columns: LapColumns) -> Result<RecordBatch, ArchiveError> {
    let length = meta.track_length_m.max(f32::MIN_POSITIVE);
    let frac: Vec<f32> = columns.distance_m.iter().map(|d| d / length).collect();
    let (tick, owned) = columns.into_columns();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(owned.len() + 2);
    arrays.push(Arc::new(UInt64Array::from(tick)));
    let mut frac = Some(frac);
    for (field, values) in LapColumns::FIELDS.iter().zip(owned) {
        if field.name == GEAR {
            arrays.push(Arc::new(
                values
                    .iter()
                    .map(|g| g.is_finite().then_some(*g as i32))
                    .collect::<Int32Array>(),
            ));
            continue;
        }
        arrays.push(Arc::new(Float32Array::from(values)));
        if field.name == "distance_m"
            && let Some(frac) = frac.take()
        {
            arrays.push(Arc::new(Float32Array::from(frac)));
        }
    }
    let rows = arrays.first().map_or(0, |a| a.len());
    let text = |v: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, rows)))
    };
    let session = meta.session.to_string();
    arrays.extend([
        text(&session),
        Arc::new(Int32Array::from(vec![i32::from(meta.car); rows])) as ArrayRef,
        text(&meta.driver),
        Arc::new(Int32Array::from(vec![i32::from(meta.lap); rows])),
    ]);
    Ok(RecordBatch::try_new(lap_schema(), arrays)?)
}

/// Encodes one batch as a Parquet file into `out` with the archive's settings and returns
/// `out`.
pub(crate) fn encode_parquet<W: std::io::Write + Send>(
    out: W,
    batch: &RecordBatch,
    kv: Vec<KeyValue>,
) -> Result<W, parquet::errors::ParquetError> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL)?;
    // Telemetry floats barely repeat: a dictionary costs a hash per value and is then dropped.
    // Byte-stream split groups the floats' bytes so zstd finds the repetition in exponents.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(false)
        .set_encoding(Encoding::BYTE_STREAM_SPLIT)
        .set_column_encoding(ColumnPath::from("tick"), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(ColumnPath::from("gear"), Encoding::DELTA_BINARY_PACKED);
    // The identity columns hold one value each. Delta encodings store a repeated value as
    // runs of zero deltas (a few bytes after zstd) without hashing every row, which a
    // dictionary would (twice the encoding time of a lap).
    let props = IDENTITY_COLUMNS.iter().fold(props, |p, name| {
        let encoding = if matches!(*name, "car" | "lap") {
            Encoding::DELTA_BINARY_PACKED
        } else {
            Encoding::PLAIN
        };
        p.set_column_encoding(ColumnPath::from(*name), encoding)
            .set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::None)
    });
    let props = props
        // One page per column in a lap: chunk statistics are as selective and cost less.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_key_value_metadata(Some(kv))
        .build();
    // The lap is one row group of flat columns (one leaf each). They are encoded apart, every
    // other one on a second thread, then spliced into the file in schema order.
    let schema = batch.schema();
    let (mut file, factory) =
        ArrowWriter::try_new(out, Arc::clone(&schema), Some(props))?.into_serialized_writer()?;
    let mut jobs = Vec::with_capacity(schema.fields().len());
    for ((writer, field), array) in factory
        .create_column_writers(0)?
        .into_iter()
        .zip(schema.fields())
        .zip(batch.columns())
    {
        let mut leaves = compute_leaves(field, array)?;
        let (Some(leaf), None) = (leaves.pop(), leaves.pop()) else {
            return Err(ParquetError::General(format!(
                "column {} is not a flat column",
                field.name()
            )));
        };
        jobs.push((writer, leaf));
    }
    let encode = |(mut writer, leaf): (ArrowColumnWriter, ArrowLeafColumn)| {
        writer.write(&leaf)?;
        writer.close()
    };
    // Balance the two threads by cost: a text column costs about three numeric ones (every
    // value is compared for the statistics and delta-encoded).
    let cost = |f: &Field| {
        if matches!(f.data_type(), DataType::Utf8) {
            3
        } else {
            1
        }
    };
    let (mut load_mine, mut load_theirs) = (0, 0);
    let (theirs, mine): (Vec<_>, Vec<_>) = jobs.into_iter().enumerate().partition(|(i, _)| {
        let c = cost(schema.field(*i));
        if load_theirs < load_mine {
            load_theirs += c;
            true
        } else {
            load_mine += c;
            false
        }
    });
    let chunks =
        std::thread::scope(
            |scope| -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
                let helper = scope.spawn(|| {
                    theirs
                        .into_iter()
                        .map(|(i, job)| encode(job).map(|c| (i, c)))
                        .collect::<Result<Vec<_>, ParquetError>>()
                });
                let mut chunks = mine
                    .into_iter()
                    .map(|(i, job)| encode(job).map(|c| (i, c)))
                    .collect::<Result<Vec<_>, ParquetError>>()?;
                chunks.extend(helper.join().map_err(|_| {
                    ParquetError::General("column encoder thread panicked".into())
                })??);
                chunks.sort_unstable_by_key(|(i, _)| *i);
                Ok(chunks)
            },
        )?;
    let mut row_group = file.next_row_group()?;
    for (_, chunk) in chunks {
        chunk.append_to_row_group(&mut row_group)?;
    }
    row_group.close()?;
    file.into_inner()
}

/// Encodes a lap as a Parquet file in memory, exactly as [`super::write_lap`] writes it (for
/// benchmarks and for sending a lap elsewhere).
///
/// # Errors
/// [`ArchiveError`] when the columns cannot become a batch or the encoding fails.
pub fn encode_lap(meta: &LapMeta, columns: LapColumns) -> Result<Vec<u8>, ArchiveError> {
    let rows = columns.len();
    let batch = lap_batch(meta, columns)?;
    let out = Vec::with_capacity(batch.get_array_memory_size() / 2);
    encode_parquet(out, &batch, key_values(meta, rows)).map_err(|source| ArchiveError::Parquet {
        path: PathBuf::from("<memory>"),
        source,
    })
}
