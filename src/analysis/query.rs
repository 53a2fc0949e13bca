//! `apexsim analyze`: the stored metrics of an archive, read with polars lazy scans over the
//! Hive-partitioned tables (the `track` filter prunes whole partitions, the others are pushed
//! into the scan), so archives larger than memory are analysed a file at a time. Laps whose
//! metrics are missing (all of them with `--recompute`) are measured first ([`super::measure`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use polars::prelude::*;
use serde::Serialize;
use thiserror::Error;

use std::collections::BTreeMap;

use super::across::spreads;
use super::measure::{ensure_metrics, lap_files, measure_all};
use super::store::write_tables;
use super::{LapMetrics, Thresholds};
use crate::archive::{ArchiveError, LapMeta};

/// Why an analysis failed as a whole (a bad lap file is reported, not an error).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// polars failed to scan or compute.
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
    /// The archive could not be read.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// Which laps to analyse.
#[derive(Debug, Clone, Default)]
pub struct LapFilter {
    /// Track slug (a partition).
    pub track: Option<String>,
    /// Car model.
    pub car: Option<String>,
    /// Session id.
    pub session: Option<String>,
    /// Driver.
    pub driver: Option<String>,
}

/// One lap's row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LapRow {
    /// `sim` or `iracing`.
    pub source: String,
    /// Track slug.
    pub track: String,
    /// Session date.
    pub date: String,
    /// Session id.
    pub session: String,
    /// Car index in the session.
    pub car: i32,
    /// Car model.
    pub car_model: String,
    /// Driver.
    pub driver: String,
    /// Lap number.
    pub lap: i32,
    /// Whether the lap is valid.
    pub valid: bool,
    /// Official lap time, s.
    pub official_lap_time_s: Option<f64>,
    /// Lap time integrated from the samples, s.
    pub lap_time_s: Option<f64>,
    /// Top speed, m/s.
    pub top_speed_mps: f32,
    /// Share of time at full throttle.
    pub full_throttle_share: f32,
    /// Share of time braking.
    pub braking_share: f32,
    /// Share of time coasting.
    pub coasting_share: f32,
    /// Braking zones.
    pub braking_zones: i32,
    /// Corners.
    pub corners: i32,
    /// Sector times, s.
    pub sector_times_s: Vec<f32>,
    /// Minisector times, s.
    #[serde(skip)]
    pub minisector_times_s: Vec<f32>,
}

/// One track and car's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Track slug.
    pub track: String,
    /// Car model.
    pub car_model: String,
    /// Laps.
    pub laps: u32,
    /// Valid laps.
    pub valid_laps: u32,
    /// Best valid lap time, s.
    pub best_lap_s: Option<f64>,
    /// Who drove it, and which lap: `driver session-prefix lap`.
    pub best_lap: Option<String>,
    /// Mean valid lap time, s.
    pub mean_lap_s: Option<f64>,
    /// Sum of the best minisectors of the valid laps, s.
    pub theoretical_best_s: Option<f64>,
    /// Median over braking places of the braking point's spread (MAD) across valid laps, m.
    pub braking_point_mad_m: Option<f32>,
    /// Median over corners of the apex speed's spread (MAD) across valid laps, m/s.
    pub apex_speed_mad_mps: Option<f32>,
}

/// What `analyze` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    /// One row per lap.
    pub laps: Vec<LapRow>,
    /// One row per track and car.
    pub summary: Vec<Summary>,
    /// Lap files that could not be analysed, with the reason.
    pub errors: Vec<String>,
    /// Laps measured now (missing metrics, or `--recompute`).
    pub computed: usize,
    /// Laps of live sessions whose metrics their writer has not stored yet.
    pub waiting: usize,
    /// Seconds spent measuring them.
    pub compute_s: f64,
    /// Seconds spent querying the stored metrics.
    pub query_s: f64,
}

/// Whether a stored metric table has a file (a pruned archive may keep its empty directories).
pub(crate) fn has_table(data: &Path, table: &str) -> bool {
    fn any_parquet(dir: &Path) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                if p.is_dir() {
                    any_parquet(&p)
                } else {
                    p.extension().is_some_and(|x| x == "parquet")
                }
            })
    }
    any_parquet(&data.join(crate::archive::DERIVED_DIR).join(table))
}

pub(crate) fn scan(data: &Path, table: &str) -> PolarsResult<LazyFrame> {
    let glob = format!(
        "{}/{}/{table}/**/*.parquet",
        data.display(),
        crate::archive::DERIVED_DIR
    );
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            try_parse_dates: false,
            ..Default::default()
        },
        ..Default::default()
    };
    LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), args)
}

fn filtered(lf: LazyFrame, f: &LapFilter) -> LazyFrame {
    let mut pred: Option<Expr> = None;
    for (name, value) in [
        ("track", &f.track),
        ("car_model", &f.car),
        ("session", &f.session),
        ("driver", &f.driver),
    ] {
        if let Some(v) = value {
            let e = col(name).eq(lit(v.as_str()));
            pred = Some(match pred {
                Some(p) => p.and(e),
                None => e,
            });
        }
    }
    match pred {
        Some(p) => lf.filter(p),
        None => lf,
    }
}

pub(crate) fn strs(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    Ok(df
        .column(name)?
        .str()?
        .iter()
        .map(|s| s.unwrap_or_default().to_owned())
        .collect())
}

fn floats(df: &DataFrame, name: &str) -> PolarsResult<Vec<Option<f64>>> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().collect())
}

pub(crate) fn ints(df: &DataFrame, name: &str) -> PolarsResult<Vec<i32>> {
    let c = df.column(name)?.cast(&DataType::Int32)?;
    Ok(c.i32()?.iter().map(Option::unwrap_or_default).collect())
}

fn lists(df: &DataFrame, name: &str) -> PolarsResult<Vec<Vec<f32>>> {
    let c = df.column(name)?;
    let mut out = Vec::with_capacity(c.len());
    for s in c.list()?.amortized_iter() {
        out.push(match s {
            Some(s) => s
                .as_ref()
                .f32()?
                .iter()
                .map(|x| x.unwrap_or(f32::NAN))
                .collect(),
            None => Vec::new(),
        });
    }
    Ok(out)
}

/// Reads the stored metrics of the archive under `data`, filtered, into lap rows (in track,
/// car, session and lap order).
///
/// # Errors
/// [`AnalysisError`] when polars cannot scan the tables.
pub fn query_laps(data: &Path, f: &LapFilter) -> Result<Vec<LapRow>, AnalysisError> {
    if !has_table(data, "laps") {
        return Ok(Vec::new());
    }
    let df = filtered(scan(data, "laps")?, f)
        .sort(
            ["track", "car_model", "session", "car", "lap"],
            SortMultipleOptions::default(),
        )
        .collect()?;
    let f64s = |n| floats(&df, n);
    let f32s = |n| -> PolarsResult<Vec<f32>> {
        Ok(floats(&df, n)?
            .into_iter()
            .map(|x| x.unwrap_or(f64::NAN) as f32)
            .collect())
    };
    let (source, track, date) = (
        strs(&df, "source")?,
        strs(&df, "track")?,
        strs(&df, "date")?,
    );
    let (session, car_model, driver) = (
        strs(&df, "session")?,
        strs(&df, "car_model")?,
        strs(&df, "driver")?,
    );
    let (car, lap, zones, corners) = (
        ints(&df, "car")?,
        ints(&df, "lap")?,
        ints(&df, "braking_zones")?,
        ints(&df, "corners")?,
    );
    let valid: Vec<bool> = df
        .column("valid")?
        .bool()?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let (official, time) = (f64s("official_lap_time_s")?, f64s("lap_time_s")?);
    let (top, full, braking, coasting) = (
        f32s("top_speed_mps")?,
        f32s("full_throttle_share")?,
        f32s("braking_share")?,
        f32s("coasting_share")?,
    );
    let (sectors, minis) = (
        lists(&df, "sector_times_s")?,
        lists(&df, "minisector_times_s")?,
    );
    Ok((0..df.height())
        .map(|i| LapRow {
            source: source[i].clone(),
            track: track[i].clone(),
            date: date[i].clone(),
            session: session[i].clone(),
            car: car[i],
            car_model: car_model[i].clone(),
            driver: driver[i].clone(),
            lap: lap[i],
            valid: valid[i],
            official_lap_time_s: official[i],
            lap_time_s: time[i],
            top_speed_mps: top[i],
            full_throttle_share: full[i],
            braking_share: braking[i],
            coasting_share: coasting[i],
            braking_zones: zones[i],
            corners: corners[i],
            sector_times_s: sectors[i].clone(),
            minisector_times_s: minis[i].clone(),
        })
        .collect())
}

/// The summary per track and car: counts, best and mean valid lap (polars group-by), the
/// theoretical best from the valid laps' minisectors, and the braking points' spread.
///
/// # Errors
/// [`AnalysisError`] when polars cannot scan or aggregate.
pub fn summarize(
    data: &Path,
    f: &LapFilter,
    laps: &[LapRow],
    th: &Thresholds,
) -> Result<Vec<Summary>, AnalysisError> {
    if laps.is_empty() {
        return Ok(Vec::new());
    }
    let time = col("official_lap_time_s").fill_null(col("lap_time_s"));
    let df = filtered(scan(data, "laps")?, f)
        .group_by([col("track"), col("car_model")])
        .agg([
            len().alias("laps"),
            col("valid")
                .cast(DataType::UInt32)
                .sum()
                .alias("valid_laps"),
            time.clone().filter(col("valid")).min().alias("best"),
            time.filter(col("valid")).mean().alias("mean"),
            col("track_length_m").first().alias("length"),
        ])
        .sort(["track", "car_model"], SortMultipleOptions::default())
        .collect()?;
    let zones = places(data, f, "braking_zones", "start_m", "start_speed_mps")?;
    let apexes = places(data, f, "corners", "apex_m", "apex_speed_mps")?;
    let (track, car) = (strs(&df, "track")?, strs(&df, "car_model")?);
    let (n, valid) = (ints(&df, "laps")?, ints(&df, "valid_laps")?);
    let (best, mean, length) = (
        floats(&df, "best")?,
        floats(&df, "mean")?,
        floats(&df, "length")?,
    );
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let group = |r: &&LapRow| r.track == track[i] && r.car_model == car[i];
        let clean: Vec<&LapRow> = laps.iter().filter(group).filter(|r| r.valid).collect();
        let best_lap = best[i].and_then(|b| {
            clean
                .iter()
                .find(|r| r.official_lap_time_s.or(r.lap_time_s) == Some(b))
                .map(|r| {
                    format!(
                        "{} {} lap {}",
                        r.driver,
                        &r.session[..8.min(r.session.len())],
                        r.lap
                    )
                })
        });
        let theoretical =
            super::across::theoretical_best(clean.iter().map(|r| r.minisector_times_s.as_slice()));
        let len_m = (length[i].unwrap_or(0.0) as f32).max(1.0);
        let min_laps = super::across::places_need(clean.len());
        let spread = |p: &Places| {
            spreads(
                &p.points(&track[i], &car[i]),
                th.match_window_m,
                len_m,
                min_laps,
            )
        };
        let median_of = |mut v: Vec<f32>| (!v.is_empty()).then(|| super::across::median(&mut v));
        out.push(Summary {
            track: track[i].clone(),
            car_model: car[i].clone(),
            laps: u32::try_from(n[i]).unwrap_or(0),
            valid_laps: u32::try_from(valid[i]).unwrap_or(0),
            best_lap_s: best[i],
            best_lap,
            mean_lap_s: mean[i],
            theoretical_best_s: theoretical,
            braking_point_mad_m: median_of(
                spread(&zones).iter().map(|s| s.position_mad_m).collect(),
            ),
            apex_speed_mad_mps: median_of(spread(&apexes).iter().map(|s| s.value_mad).collect()),
        });
    }
    Ok(out)
}

/// Points of the valid laps from a metric table: where on the lap and a value there, with the
/// track and car of each.
struct Places {
    track: Vec<String>,
    car: Vec<String>,
    at: Vec<Option<f64>>,
    value: Vec<Option<f64>>,
}

impl Places {
    fn points(&self, track: &str, car: &str) -> Vec<(f32, f32)> {
        (0..self.at.len())
            .filter(|&k| self.track[k] == track && self.car[k] == car)
            .map(|k| {
                (
                    self.at[k].unwrap_or(f64::NAN) as f32,
                    self.value[k].unwrap_or(f64::NAN) as f32,
                )
            })
            .collect()
    }
}

fn places(
    data: &Path,
    f: &LapFilter,
    table: &str,
    at: &str,
    value: &str,
) -> Result<Places, AnalysisError> {
    let df = filtered(scan(data, table)?, f)
        .filter(col("valid"))
        .select([col("track"), col("car_model"), col(at), col(value)])
        .collect()?;
    Ok(Places {
        track: strs(&df, "track")?,
        car: strs(&df, "car_model")?,
        at: floats(&df, at)?,
        value: floats(&df, value)?,
    })
}

/// Analyses the archive under `data`: measures the laps that lack metrics (all with
/// `recompute`), then reads the stored metrics with polars.
///
/// # Errors
/// [`AnalysisError`] when the stored metrics cannot be scanned.
pub fn analyze(
    data: &Path,
    f: &LapFilter,
    th: &Thresholds,
    recompute: bool,
) -> Result<Analysis, AnalysisError> {
    let started = Instant::now();
    let ensured = ensure_metrics(data, f.track.as_deref(), th, recompute);
    let compute_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let laps = query_laps(data, f)?;
    let summary = summarize(data, f, &laps, th)?;
    Ok(Analysis {
        laps,
        summary,
        errors: ensured.errors,
        computed: ensured.computed,
        waiting: ensured.waiting,
        compute_s,
        query_s: started.elapsed().as_secs_f64(),
    })
}

/// Analyses archives and loose lap files: a directory holding `laps/` is an archive (its
/// metrics are stored in it); other files and folders are lap files, measured into a scratch
/// archive that is dropped afterwards. Reports are concatenated in the order given.
///
/// # Errors
/// [`AnalysisError`] when stored metrics cannot be scanned or the scratch directory cannot be
/// made.
pub fn analyze_paths(
    paths: &[PathBuf],
    f: &LapFilter,
    th: &Thresholds,
    recompute: bool,
) -> Result<Analysis, AnalysisError> {
    let mut total = Analysis::default();
    let mut loose = Vec::new();
    for p in paths {
        if p.join("laps").is_dir() {
            total.extend(analyze(p, f, th, recompute)?);
        } else if p.is_dir() {
            loose.extend(lap_files(p, None));
        } else {
            loose.push(p.clone());
        }
    }
    if !loose.is_empty() {
        let scratch = std::env::temp_dir().join(format!("apexsim-analyze-{}", std::process::id()));
        let result = (|| {
            let started = Instant::now();
            let mut part = Analysis::default();
            let mut by_partition: BTreeMap<PathBuf, Vec<(LapMeta, LapMetrics)>> = BTreeMap::new();
            for m in measure_all(&loose, &[], th) {
                match m {
                    Ok((meta, m)) => {
                        let rel = super::store::partition(&meta);
                        by_partition.entry(rel).or_default().push((meta, m));
                    }
                    Err(e) => part.errors.push(e),
                }
            }
            for (rel, laps) in &by_partition {
                part.computed += laps.len();
                write_tables(&scratch, rel, "loose", laps)?;
            }
            part.compute_s = started.elapsed().as_secs_f64();
            let started = Instant::now();
            part.laps = query_laps(&scratch, f)?;
            part.summary = summarize(&scratch, f, &part.laps, th)?;
            part.query_s = started.elapsed().as_secs_f64();
            Ok::<_, AnalysisError>(part)
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        total.extend(result?);
    }
    Ok(total)
}

impl Analysis {
    fn extend(&mut self, other: Analysis) {
        self.laps.extend(other.laps);
        self.summary.extend(other.summary);
        self.errors.extend(other.errors);
        self.computed += other.computed;
        self.waiting += other.waiting;
        self.compute_s += other.compute_s;
        self.query_s += other.query_s;
    }
}
