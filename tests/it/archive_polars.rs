//! polars reads the archive as one Hive-partitioned dataset (`source=`, `track=`, `date=`
//! directories) and filters on track and date by partition.

use std::path::Path;
use std::process::Command;

use apexsim::archive::index::Index;
use apexsim::archive::{Date, LapMeta, read_lap, write_lap};
use polars::prelude::*;

fn race(data: &Path, track: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_apexsim"))
        .args(["--data", data.to_str().expect("utf-8")])
        .args([
            "race", "--fast", "--track", track, "--cars", "2", "--laps", "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run apexsim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn polars_reads_the_archive_with_hive_partitions_and_filters_on_track_and_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    race(data, "oval_simple");
    race(data, "road_course_a");
    // One more oval lap on another day: a copy of an archived lap, re-dated.
    let index = Index::open(data).expect("index");
    let laps = index.laps(None).expect("laps");
    let (meta, columns) = read_lap(
        &data.join(
            &laps
                .iter()
                .find(|l| l.file.to_string_lossy().contains("track=oval_simple/"))
                .expect("an oval lap")
                .file,
        ),
    )
    .expect("read");
    let old_rows = columns.len();
    let old = LapMeta {
        date: Date::parse("2026-01-01").expect("date"),
        lap: 99,
        ..meta.clone()
    };
    write_lap(data, &old, columns).expect("write");

    let today = Date::today().to_string();
    let rows_where = |track: &str| -> u64 {
        laps.iter()
            .filter(|l| {
                l.file
                    .to_string_lossy()
                    .contains(&format!("track={track}/"))
            })
            .map(|l| l.rows)
            .sum()
    };
    let scan = || {
        let glob = format!("{}/laps/**/*.parquet", data.display());
        let args = ScanArgsParquet {
            hive_options: HiveOptions {
                enabled: Some(true),
                try_parse_dates: false,
                ..Default::default()
            },
            ..Default::default()
        };
        LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), args).expect("scan")
    };

    let all = scan().collect().expect("collect");
    for column in [
        "source",
        "track",
        "date",
        "tick",
        "speed_mps",
        "distance_frac",
        "gear",
        "rpm",
    ] {
        assert!(
            all.column(column).is_ok(),
            "no column {column}: {:?}",
            all.schema()
        );
    }
    assert_eq!(
        all.height() as u64,
        rows_where("oval_simple") + rows_where("road_course_a") + old_rows as u64
    );

    let oval_today = scan()
        .filter(
            col("track")
                .eq(lit("oval_simple"))
                .and(col("date").eq(lit(today.as_str()))),
        )
        .collect()
        .expect("collect");
    assert_eq!(oval_today.height() as u64, rows_where("oval_simple"));

    let oval_january = scan()
        .filter(
            col("track")
                .eq(lit("oval_simple"))
                .and(col("date").eq(lit("2026-01-01"))),
        )
        .collect()
        .expect("collect");
    assert_eq!(oval_january.height(), old_rows);
    let sources = all
        .column("source")
        .expect("source")
        .str()
        .expect("str")
        .unique()
        .expect("unique");
    assert_eq!(sources.len(), 1);

    // Schema version 3: the lap's identity is in columns, so an engine groups rows by lap
    // without parsing file names: one group per lap file, with its row count.
    let per_lap = scan()
        .group_by([col("session"), col("car"), col("lap"), col("driver")])
        .agg([len().alias("rows")])
        .collect()
        .expect("group by lap");
    assert_eq!(per_lap.height(), laps.len() + 1, "{per_lap:?}");
    let total: u64 = per_lap
        .column("rows")
        .expect("rows")
        .cast(&DataType::UInt64)
        .expect("cast")
        .u64()
        .expect("u64")
        .iter()
        .flatten()
        .sum();
    assert_eq!(total, all.height() as u64);
}
