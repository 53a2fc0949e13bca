//! Content: cars, tracks and race templates loaded from `content/` (seed 003 sections 9-10).
//!
//! ```text
//! content/cars/<slug>/car.toml
//! content/tracks/<slug>/track.toml + centerline.csv
//! content/templates/<slug>.toml
//! ```
//!
//! Loading validates everything and reports every bad file with the file, the line and field,
//! and what is wrong; the good files still load. Entries are ordered by slug, so loading the
//! same directory always gives the same content (and the same simulation).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apexsim_systems::car::CarSpec;
use apexsim_systems::track::{TrackGeometry, TrackGeometryError};
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;
use uuid::Uuid;

mod schedule;

pub use schedule::Schedule;

/// Grid slots of a track whose `track.toml` does not say.
pub const DEFAULT_GRID_SLOTS: u32 = 16;

/// A problem with one content file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the expected shape (missing, unknown or
    /// mistyped fields).
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A field has a value outside what ApexSim accepts.
    #[error("{}:{line}: field `{field}`: {problem}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Field name, dotted (`physics.mass_kg`).
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A row of a centerline CSV, or the centerline as a whole, is unusable.
    #[error("{}{}: {problem}", path.display(), at_line(*line))]
    Centerline {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line (0 when the problem is the file as a whole).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Two entries of one kind share an id.
    #[error("{}: id {id} is already used by {}", path.display(), other.display())]
    DuplicateId {
        /// The file rejected.
        path: PathBuf,
        /// The id.
        id: Uuid,
        /// The file that has it first.
        other: PathBuf,
    },
    /// A template names a track or car that is not loaded.
    #[error("{}:{line}: field `{field}`: no {kind} has id {id}", path.display())]
    UnknownReference {
        /// The template file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The field.
        field: String,
        /// "track" or "car".
        kind: &'static str,
        /// The id that matches nothing.
        id: String,
    },
}

/// `:N` for a line number, nothing for 0 (the file as a whole).
fn at_line(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

/// A car model.
#[derive(Debug, Clone, PartialEq)]
pub struct CarContent {
    /// Stable id.
    pub id: Uuid,
    /// Directory name.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Content version.
    pub version: String,
    /// Physics.
    pub spec: CarSpec,
    /// The manifest.
    pub path: PathBuf,
}

/// A track.
#[derive(Debug, Clone)]
pub struct TrackContent {
    /// Stable id.
    pub id: Uuid,
    /// Directory name.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Content version.
    pub version: String,
    /// Centerline, width and grid.
    pub geometry: TrackGeometry,
    /// Where the sectors start, as fractions of the lap, increasing (the first sector starts
    /// at the line and is not listed); empty for one sector.
    pub sectors: Vec<f32>,
    /// The manifest.
    pub path: PathBuf,
}

/// Two versions of a track are equal when they load the same: the same manifest, geometry
/// and sectors.
impl PartialEq for TrackContent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.slug == other.slug
            && self.name == other.name
            && self.version == other.version
            && self.sectors == other.sectors
            && self.path == other.path
            && self.geometry.width_m() == other.geometry.width_m()
            && self.geometry.points() == other.geometry.points()
            && self.geometry.grid_slots().len() == other.geometry.grid_slots().len()
    }
}

/// How a templated session starts (seed 003 section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// The host starts it.
    Manual,
    /// Starts by itself 60 s after enough players joined.
    Countdown,
    /// Starts at a scheduled time.
    Scheduled,
}

/// A race template (seed 003 section 9).
#[derive(Debug, Clone)]
pub struct RaceTemplate {
    /// Stable id.
    pub id: Uuid,
    /// File name without `.toml`.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Track id.
    pub track_id: Uuid,
    /// Car ids allowed; empty = every car.
    pub allowed_cars: Vec<Uuid>,
    /// 2..=16.
    pub max_players: u8,
    /// AI slots to fill, at most `max_players`.
    pub default_ai_count: u8,
    /// 1..=99.
    pub lap_limit: u8,
    /// How sessions start.
    pub start_mode: StartMode,
    /// When scheduled sessions start (seed 003 section 9), for scheduled templates.
    pub schedule: Option<Schedule>,
    /// Humans a countdown session waits for before it starts by itself (at least 1).
    pub min_players: u8,
    /// The lap limits a custom session from this template may ask for.
    pub lap_limit_bounds: (u8, u8),
    /// The AI counts a custom session from this template may ask for.
    pub ai_count_bounds: (u8, u8),
    /// 0..=100, weight in the rotation.
    pub rotation_weight: u8,
    /// What the file says (`active`, true when left out).
    pub enabled: bool,
    /// Inactive templates are skipped: those the file disables and those whose track or one of
    /// whose cars is missing.
    pub active: bool,
    /// The file.
    pub path: PathBuf,
}

impl RaceTemplate {
    /// Whether `car` may race in this template's sessions.
    pub fn allows(&self, car: Uuid) -> bool {
        self.allowed_cars.is_empty() || self.allowed_cars.contains(&car)
    }
}

/// An entry whose file changed into something that does not load: the previous version stays
/// in use, and this says why the new one was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    /// The manifest (or centerline) that does not load.
    pub path: PathBuf,
    /// The kind of entry: "car", "track" or "template".
    pub kind: &'static str,
    /// The entry kept, by slug.
    pub slug: String,
    /// What is wrong, with the file and line.
    pub error: String,
}

/// Everything loaded from a content directory, each list ordered by slug. Entries are shared
/// (`Arc`) so a session keeps the version it started with when the content is reloaded.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// Car models.
    pub cars: Vec<Arc<CarContent>>,
    /// Tracks.
    pub tracks: Vec<Arc<TrackContent>>,
    /// Race templates.
    pub templates: Vec<Arc<RaceTemplate>>,
    /// Entries whose files changed into something that does not load (only after a reload).
    pub quarantined: Vec<Quarantined>,
}

/// The result of loading a content directory: what loaded, and every problem found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// The valid content.
    pub content: Content,
    /// One entry per problem, in file order.
    pub errors: Vec<ContentError>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Content {
    /// Loads `dir/cars`, `dir/tracks` and `dir/templates`. Never fails as a whole: bad files are
    /// reported in [`LoadReport::errors`] and left out.
    pub fn load(dir: &Path) -> LoadReport {
        Self::load_over(dir, None)
    }

    /// Loads `dir` again after a change (seed 003 section 10): an entry whose file no longer
    /// loads keeps its `previous` version and is listed in [`Content::quarantined`], with the
    /// error also in [`LoadReport::errors`]; entries whose files are gone go; templates are
    /// checked against the content as reloaded (one whose track or car is missing is
    /// inactive until it is back).
    pub fn reload(dir: &Path, previous: &Content) -> LoadReport {
        Self::load_over(dir, Some(previous))
    }

    fn load_over(dir: &Path, previous: Option<&Content>) -> LoadReport {
        let mut report = LoadReport::default();
        let errors = &mut report.errors;
        let content = &mut report.content;
        let quarantined = &mut content.quarantined;
        for (slug, path) in subdirs(&dir.join("cars"), "car.toml", errors) {
            let loaded = load_car(&slug, &path).map(|car| (car, Vec::new()));
            let kept = previous.and_then(|p| p.cars.iter().find(|c| c.slug == slug));
            add_entry(&mut content.cars, loaded, kept, quarantined, errors);
        }
        for (slug, path) in subdirs(&dir.join("tracks"), "track.toml", errors) {
            let loaded = load_track(&slug, &path).map(|track| (track, Vec::new()));
            let kept = previous.and_then(|p| p.tracks.iter().find(|t| t.slug == slug));
            add_entry(&mut content.tracks, loaded, kept, quarantined, errors);
        }
        for (slug, path) in files(&dir.join("templates"), "toml", errors) {
            let loaded = load_template(&slug, &path, content);
            let kept = previous
                .and_then(|p| p.templates.iter().find(|t| t.slug == slug))
                .map(|t| Arc::new(recheck_template(t, content)));
            let quarantined = &mut content.quarantined;
            add_entry(
                &mut content.templates,
                loaded,
                kept.as_ref(),
                quarantined,
                errors,
            );
        }
        report
    }

    /// The car with this id.
    pub fn car_by_id(&self, id: Uuid) -> Option<&Arc<CarContent>> {
        self.cars.iter().find(|c| c.id == id)
    }

    /// The track with this id.
    pub fn track_by_id(&self, id: Uuid) -> Option<&Arc<TrackContent>> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// The template with this id.
    pub fn template_by_id(&self, id: Uuid) -> Option<&Arc<RaceTemplate>> {
        self.templates.iter().find(|t| t.id == id)
    }

    /// The car whose slug, id or name (any case) is `key`.
    pub fn car(&self, key: &str) -> Option<&Arc<CarContent>> {
        self.cars
            .iter()
            .find(|c| c.slug == key || c.id.to_string() == key || c.name.eq_ignore_ascii_case(key))
    }

    /// The track whose slug, id or name (any case) is `key`.
    pub fn track(&self, key: &str) -> Option<&Arc<TrackContent>> {
        self.tracks
            .iter()
            .find(|t| t.slug == key || t.id.to_string() == key || t.name.eq_ignore_ascii_case(key))
    }

    /// The template whose slug, id or name (any case) is `key`.
    pub fn template(&self, key: &str) -> Option<&Arc<RaceTemplate>> {
        self.templates
            .iter()
            .find(|t| t.slug == key || t.id.to_string() == key || t.name.eq_ignore_ascii_case(key))
    }
}

/// A loaded entry with an id, a slug and the file it came from.
trait Entry {
    const KIND: &'static str;
    fn id(&self) -> Uuid;
    fn slug(&self) -> &str;
    fn path(&self) -> &Path;
}

macro_rules! entry {
    ($($t:ty => $kind:literal),*) => {$(
        impl Entry for $t {
            const KIND: &'static str = $kind;
            fn id(&self) -> Uuid {
                self.id
            }
            fn slug(&self) -> &str {
                &self.slug
            }
            fn path(&self) -> &Path {
                &self.path
            }
        }
    )*};
}
entry!(CarContent => "car", TrackContent => "track", RaceTemplate => "template");

/// Adds a loaded entry (with the problems that did not reject it) unless its id is taken;
/// otherwise, or when loading failed, records why. On a reload, an entry that fails keeps its
/// previous version (`kept`), quarantined.
fn add_entry<T: Entry>(
    list: &mut Vec<Arc<T>>,
    loaded: Result<(T, Vec<ContentError>), ContentError>,
    kept: Option<&Arc<T>>,
    quarantined: &mut Vec<Quarantined>,
    errors: &mut Vec<ContentError>,
) {
    let entry = match loaded {
        Ok((entry, problems)) => {
            if let Some(other) = list.iter().find(|e| e.id() == entry.id()) {
                Err(ContentError::DuplicateId {
                    path: entry.path().to_owned(),
                    id: entry.id(),
                    other: other.path().to_owned(),
                })
            } else {
                errors.extend(problems);
                Ok(entry)
            }
        }
        Err(e) => Err(e),
    };
    match (entry, kept) {
        (Ok(entry), _) => list.push(Arc::new(entry)),
        (Err(e), Some(old)) if !list.iter().any(|x| x.id() == old.id()) => {
            quarantined.push(Quarantined {
                path: error_path(&e).unwrap_or_else(|| old.path().to_owned()),
                kind: T::KIND,
                slug: old.slug().to_owned(),
                error: e.to_string(),
            });
            errors.push(e);
            list.push(old.clone());
        }
        (Err(e), _) => errors.push(e),
    }
}

/// The file a content error is about.
fn error_path(e: &ContentError) -> Option<PathBuf> {
    match e {
        ContentError::Io { path, .. }
        | ContentError::Syntax { path, .. }
        | ContentError::Field { path, .. }
        | ContentError::Centerline { path, .. }
        | ContentError::DuplicateId { path, .. }
        | ContentError::UnknownReference { path, .. } => Some(path.clone()),
    }
}

/// A template kept from before a reload, its `active` recomputed against the reloaded content
/// (it stays inactive while its track or one of its cars is missing).
fn recheck_template(t: &RaceTemplate, content: &Content) -> RaceTemplate {
    let mut t = t.clone();
    t.active = t.enabled
        && content.track_by_id(t.track_id).is_some()
        && t.allowed_cars
            .iter()
            .all(|id| content.car_by_id(*id).is_some());
    t
}

/// `(slug, dir/<slug>/<file>)` for every subdirectory, ordered by slug.
fn subdirs(dir: &Path, file: &str, errors: &mut Vec<ContentError>) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = read_dir(dir, errors)
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let slug = p.file_name()?.to_str()?.to_owned();
            Some((slug, p.join(file)))
        })
        .collect();
    out.sort();
    out
}

/// `(stem, path)` for every file with extension `ext`, ordered by stem.
fn files(dir: &Path, ext: &str, errors: &mut Vec<ContentError>) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = read_dir(dir, errors)
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
        .collect();
    out.sort();
    out
}

fn read_dir(dir: &Path, errors: &mut Vec<ContentError>) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(source) => {
            errors.push(ContentError::Io {
                path: dir.to_owned(),
                source,
            });
            Vec::new()
        }
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads and parses a TOML file into `T`, with TOML errors located by line.
fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, String), ContentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ContentError::Io {
        path: path.to_owned(),
        source,
    })?;
    match toml::from_str::<T>(&text) {
        Ok(v) => Ok((v, text)),
        Err(e) => Err(ContentError::Syntax {
            path: path.to_owned(),
            line: e.span().map_or(1, |s| line_of(&text, s.start)),
            message: e.message().trim().to_owned(),
        }),
    }
}

/// Field checks that share the file, its text and the error shape.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn field<T>(&self, field: &str, value: &Spanned<T>, problem: String) -> ContentError {
        ContentError::Field {
            path: self.path.to_owned(),
            line: line_of(self.text, value.span().start),
            field: field.to_owned(),
            problem,
        }
    }

    fn range(
        &self,
        field: &str,
        v: &Spanned<f32>,
        min: f32,
        max: f32,
    ) -> Result<f32, ContentError> {
        let x = *v.get_ref();
        if x.is_finite() && x >= min && x <= max {
            Ok(x)
        } else {
            Err(self.field(field, v, format!("{x} is outside {min}..={max}")))
        }
    }

    fn int_range<T: Copy + PartialOrd + fmt::Display>(
        &self,
        field: &str,
        v: &Spanned<T>,
        min: T,
        max: T,
    ) -> Result<T, ContentError> {
        let x = *v.get_ref();
        if x >= min && x <= max {
            Ok(x)
        } else {
            Err(self.field(field, v, format!("{x} is outside {min}..={max}")))
        }
    }

    fn uuid(&self, field: &str, v: &Spanned<String>) -> Result<Uuid, ContentError> {
        Uuid::parse_str(v.get_ref())
            .map_err(|e| self.field(field, v, format!("{:?} is not a UUID: {e}", v.get_ref())))
    }

    fn text(&self, field: &str, v: &Spanned<String>) -> Result<String, ContentError> {
        let s = v.get_ref().trim();
        if s.is_empty() {
            Err(self.field(field, v, "must not be empty".into()))
        } else {
            Ok(s.to_owned())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CarFile {
    id: Spanned<String>,
    name: Spanned<String>,
    version: Spanned<String>,
    physics: PhysicsFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhysicsFile {
    mass_kg: Spanned<f32>,
    length_m: Spanned<f32>,
    width_m: Spanned<f32>,
    max_engine_force_n: Spanned<f32>,
    max_power_kw: Option<Spanned<f32>>,
    max_brake_force_n: Spanned<f32>,
    drag_coefficient: Spanned<f32>,
    grip_coefficient: Spanned<f32>,
    max_steering_angle_rad: Spanned<f32>,
    wheelbase_m: Spanned<f32>,
}

fn spec_range(name: &str) -> (f32, f32) {
    CarSpec::RANGES
        .iter()
        .find(|(n, ..)| *n == name)
        .map_or((f32::NEG_INFINITY, f32::INFINITY), |&(_, lo, hi)| (lo, hi))
}

fn load_car(slug: &str, path: &Path) -> Result<CarContent, ContentError> {
    let (file, text) = parse_toml::<CarFile>(path)?;
    let c = Checker { path, text: &text };
    let p = &file.physics;
    let f = |name: &str, v: &Spanned<f32>| {
        let (lo, hi) = spec_range(name);
        c.range(&format!("physics.{name}"), v, lo, hi)
    };
    let max_power_w = match &p.max_power_kw {
        Some(kw) => c.range("physics.max_power_kw", kw, 1.0, 10_000.0)? * 1000.0,
        None => f32::INFINITY,
    };
    let spec = CarSpec {
        mass_kg: f("mass_kg", &p.mass_kg)?,
        length_m: f("length_m", &p.length_m)?,
        width_m: f("width_m", &p.width_m)?,
        max_engine_force_n: f("max_engine_force_n", &p.max_engine_force_n)?,
        max_power_w,
        max_brake_force_n: f("max_brake_force_n", &p.max_brake_force_n)?,
        drag_coefficient: f("drag_coefficient", &p.drag_coefficient)?,
        grip_coefficient: f("grip_coefficient", &p.grip_coefficient)?,
        max_steering_angle_rad: f("max_steering_angle_rad", &p.max_steering_angle_rad)?,
        wheelbase_m: f("wheelbase_m", &p.wheelbase_m)?,
    };
    if spec.wheelbase_m > spec.length_m {
        return Err(c.field(
            "physics.wheelbase_m",
            &p.wheelbase_m,
            format!(
                "{} m is longer than the car ({} m)",
                spec.wheelbase_m, spec.length_m
            ),
        ));
    }
    Ok(CarContent {
        id: c.uuid("id", &file.id)?,
        slug: slug.to_owned(),
        name: c.text("name", &file.name)?,
        version: c.text("version", &file.version)?,
        spec,
        path: path.to_owned(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackFile {
    id: Spanned<String>,
    name: Spanned<String>,
    version: Spanned<String>,
    width_m: Spanned<f32>,
    centerline_file: Spanned<String>,
    grid_slots: Option<Spanned<u32>>,
    sectors: Option<Spanned<Vec<f32>>>,
}

fn load_track(slug: &str, path: &Path) -> Result<TrackContent, ContentError> {
    let (file, text) = parse_toml::<TrackFile>(path)?;
    let c = Checker { path, text: &text };
    let id = c.uuid("id", &file.id)?;
    let name = c.text("name", &file.name)?;
    let version = c.text("version", &file.version)?;
    let width_m = c.range("width_m", &file.width_m, 3.0, 60.0)?;
    let grid_slots = match &file.grid_slots {
        Some(v) => c.int_range("grid_slots", v, 1, 64)?,
        None => DEFAULT_GRID_SLOTS,
    };
    let sectors = match &file.sectors {
        Some(v) => {
            let s = v.get_ref().clone();
            let increasing = s.windows(2).all(|w| w[0] < w[1]);
            if !increasing || s.iter().any(|x| !(*x > 0.0 && *x < 1.0)) {
                return Err(c.field(
                    "sectors",
                    v,
                    "sector starts must be fractions of the lap, above 0 and below 1, increasing"
                        .into(),
                ));
            }
            s
        }
        None => Vec::new(),
    };
    let csv_name = c.text("centerline_file", &file.centerline_file)?;
    if Path::new(&csv_name).components().count() != 1 {
        return Err(c.field(
            "centerline_file",
            &file.centerline_file,
            format!("{csv_name:?} must be a file name in the track's directory"),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let csv_path = dir.join(&csv_name);
    let (points, lines) = read_centerline(&csv_path)?;
    let geometry = TrackGeometry::new(points, width_m).map_err(|e| {
        let (line, problem) = match &e {
            TrackGeometryError::NonFinitePoint { index } => (lines[*index], e.to_string()),
            TrackGeometryError::ZeroLengthSegment { index, next } => (
                lines[*next],
                format!("point repeats the one on line {}", lines[*index]),
            ),
            _ => (0, e.to_string()),
        };
        ContentError::Centerline {
            path: csv_path.clone(),
            line,
            problem,
        }
    })?;
    let geometry = geometry.with_grid(grid_slots as usize);
    // The grid must fit on the track: its last slot must not wrap past half a lap.
    let needed = 6.0 + grid_slots as f32 / 2.0 * apexsim_systems::track::GRID_ROW_SPACING_M + 8.0;
    if needed > geometry.length_m() / 2.0 {
        return Err(ContentError::Field {
            path: path.to_owned(),
            line: file
                .grid_slots
                .as_ref()
                .map_or(1, |v| line_of(&text, v.span().start)),
            field: "grid_slots".into(),
            problem: format!(
                "{grid_slots} slots need {needed:.0} m of grid, more than half the {:.0} m lap",
                geometry.length_m()
            ),
        });
    }
    Ok(TrackContent {
        id,
        slug: slug.to_owned(),
        name,
        version,
        geometry,
        sectors,
        path: path.to_owned(),
    })
}

/// Reads `x,y,distance_from_start` rows (header optional). Returns the points and the 1-based
/// line of each. The distance column is checked against the distance measured along the
/// points (within 1 m or 1 %, whichever is larger).
fn read_centerline(path: &Path) -> Result<(Vec<[f32; 2]>, Vec<usize>), ContentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ContentError::Io {
        path: path.to_owned(),
        source,
    })?;
    let err = |line: usize, problem: String| ContentError::Centerline {
        path: path.to_owned(),
        line,
        problem,
    };
    let mut points = Vec::new();
    let mut lines = Vec::new();
    let mut measured = 0.0f64;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            err(line, format!("not CSV: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if points.is_empty()
            && record
                .get(0)
                .and_then(|f| f.chars().next())
                .is_some_and(|ch| ch.is_ascii_alphabetic())
        {
            continue; // header
        }
        let fields: Vec<&str> = record.iter().collect();
        if fields.len() != 3 {
            return Err(err(
                line,
                format!(
                    "expected 3 columns (x,y,distance_from_start), found {}",
                    fields.len()
                ),
            ));
        }
        let mut nums = [0f32; 3];
        for (k, (name, f)) in ["x", "y", "distance_from_start"]
            .iter()
            .zip(&fields)
            .enumerate()
        {
            nums[k] = match f.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => return Err(err(line, format!("{name} {f:?} is not a finite number"))),
            };
        }
        if let Some(prev) = points.last() {
            let [px, py]: [f32; 2] = *prev;
            measured += f64::from((nums[0] - px).hypot(nums[1] - py));
        }
        let tolerance = (0.01 * measured).max(1.0);
        if (f64::from(nums[2]) - measured).abs() > tolerance {
            return Err(err(
                line,
                format!(
                    "distance_from_start {} does not match the {measured:.1} m measured along the points",
                    nums[2]
                ),
            ));
        }
        points.push([nums[0], nums[1]]);
        lines.push(line);
    }
    if points.len() < apexsim_systems::track::MIN_CENTERLINE_POINTS {
        return Err(err(
            0,
            format!(
                "{} points; a centerline needs at least {}",
                points.len(),
                apexsim_systems::track::MIN_CENTERLINE_POINTS
            ),
        ));
    }
    Ok((points, lines))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    id: Spanned<String>,
    name: Spanned<String>,
    track_config_id: Spanned<String>,
    #[serde(default)]
    allowed_cars: Vec<Spanned<String>>,
    max_players: Spanned<u8>,
    default_ai_count: Spanned<u8>,
    lap_limit: Spanned<u8>,
    start_mode: Spanned<StartMode>,
    schedule: Option<Spanned<String>>,
    rotation_weight: Spanned<u8>,
    #[serde(default = "yes")]
    active: bool,
    min_players: Option<Spanned<u8>>,
    lap_limit_range: Option<Spanned<[u8; 2]>>,
    ai_count_range: Option<Spanned<[u8; 2]>>,
}

fn yes() -> bool {
    true
}

/// Loads a template. References to tracks and cars that are not loaded do not reject it: they
/// are returned as problems and the template is made inactive until the content appears.
fn load_template(
    slug: &str,
    path: &Path,
    content: &Content,
) -> Result<(RaceTemplate, Vec<ContentError>), ContentError> {
    let (file, text) = parse_toml::<TemplateFile>(path)?;
    let c = Checker { path, text: &text };
    let max_players = c.int_range("max_players", &file.max_players, 2, 16)?;
    let default_ai_count =
        c.int_range("default_ai_count", &file.default_ai_count, 0, max_players)?;
    let start_mode = *file.start_mode.get_ref();
    let schedule = match (&file.schedule, start_mode) {
        (Some(s), StartMode::Scheduled) => {
            let schedule = Schedule::parse(s.get_ref()).map_err(|e| c.field("schedule", s, e))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if schedule.next_at_or_after(now).is_none() {
                return Err(c.field(
                    "schedule",
                    s,
                    format!("{:?} never matches a time from now on", s.get_ref()),
                ));
            }
            Some(schedule)
        }
        (None, StartMode::Scheduled) => {
            return Err(c.field(
                "start_mode",
                &file.start_mode,
                "\"scheduled\" needs a `schedule` field".into(),
            ));
        }
        (Some(s), _) => {
            return Err(c.field(
                "schedule",
                s,
                "only templates with start_mode = \"scheduled\" have a schedule".into(),
            ));
        }
        (None, _) => None,
    };
    let mut problems = Vec::new();
    let track_id = c.uuid("track_config_id", &file.track_config_id)?;
    if !content.tracks.iter().any(|t| t.id == track_id) {
        problems.push(ContentError::UnknownReference {
            path: path.to_owned(),
            line: line_of(&text, file.track_config_id.span().start),
            field: "track_config_id".into(),
            kind: "track",
            id: track_id.to_string(),
        });
    }
    let mut allowed_cars = Vec::new();
    for car in &file.allowed_cars {
        let id = c.uuid("allowed_cars", car)?;
        if allowed_cars.contains(&id) {
            return Err(c.field("allowed_cars", car, format!("{id} is listed twice")));
        }
        if !content.cars.iter().any(|k| k.id == id) {
            problems.push(ContentError::UnknownReference {
                path: path.to_owned(),
                line: line_of(&text, car.span().start),
                field: "allowed_cars".into(),
                kind: "car",
                id: id.to_string(),
            });
        }
        allowed_cars.push(id);
    }
    let min_players = match &file.min_players {
        Some(v) => c.int_range("min_players", v, 1, max_players)?,
        None => 1,
    };
    let lap_limit = c.int_range("lap_limit", &file.lap_limit, 1, 99)?;
    let bounds = |field: &str, v: &Option<Spanned<[u8; 2]>>, lo: u8, hi: u8, default: u8| {
        let Some(v) = v else {
            return Ok((lo, hi));
        };
        let [a, b] = *v.get_ref();
        if a > b || a < lo || b > hi || !(a..=b).contains(&default) {
            return Err(c.field(
                field,
                v,
                format!(
                    "[{a}, {b}] must be a range within {lo}..={hi} holding the default {default}"
                ),
            ));
        }
        Ok((a, b))
    };
    let lap_limit_bounds = bounds("lap_limit_range", &file.lap_limit_range, 1, 99, lap_limit)?;
    let ai_count_bounds = bounds(
        "ai_count_range",
        &file.ai_count_range,
        0,
        max_players,
        default_ai_count,
    )?;
    let template = RaceTemplate {
        id: c.uuid("id", &file.id)?,
        slug: slug.to_owned(),
        name: c.text("name", &file.name)?,
        track_id,
        allowed_cars,
        max_players,
        default_ai_count,
        lap_limit,
        start_mode,
        schedule,
        min_players,
        lap_limit_bounds,
        ai_count_bounds,
        rotation_weight: c.int_range("rotation_weight", &file.rotation_weight, 0, 100)?,
        enabled: file.active,
        active: file.active && problems.is_empty(),
        path: path.to_owned(),
    };
    Ok((template, problems))
}
