//! `apexsim content` (what the content directory holds, and its problems) and `apexsim track
//! from-ibt` (a track for it, built from a recording).

use std::io;
use std::path::PathBuf;

use anyhow::Context as _;
use apexsim::content::Content;
use apexsim::ingest::track::{TrackBuildError, from_ibt};
use apexsim::net::watch::ContentStatus;
use clap::Subcommand;
use serde::Serialize;

use super::print::{Format, emit, emit_json, lap_time, table};
use super::{Context, UsageError};

/// `apexsim track` commands.
#[derive(Debug, Subcommand)]
pub enum TrackCommand {
    /// Build a track for the content directory from a clean lap of an iRacing recording.
    FromIbt {
        /// The recording (.ibt).
        file: PathBuf,
        /// The lap, by the recording's lap number (as `apexsim ingest` lists it).
        #[arg(long)]
        lap: i32,
        /// Directory name of the new track under `<content>/tracks/` (a-z, 0-9, _).
        #[arg(long, value_parser = track_name)]
        name: String,
        /// Track width in metres (the recording does not hold it), 3 to 60.
        #[arg(long, default_value_t = 12.0, value_parser = track_width)]
        width: f32,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// A track's directory name: lowercase letters, digits and `_`.
fn track_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then(|| s.to_owned())
        .ok_or_else(|| format!("{s:?}: use lowercase letters, digits and _"))
}

/// A track width: 3 to 60 metres.
fn track_width(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(w) if (3.0..=60.0).contains(&w) => Ok(w),
        _ => Err(format!("{s}: use 3 to 60 metres")),
    }
}

/// `apexsim content`: lists the content and, when a server runs on the data directory, what
/// it has quarantined; the content's problems make the command fail (exit 2).
///
/// # Errors
/// A usage error naming how many problems the content has.
pub fn list(format: Format, ctx: &Context) -> anyhow::Result<()> {
    let report = Content::load(&ctx.content_dir);
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    let server = ContentStatus::read(&ctx.data);
    print_content(&report.content, &errors, server.as_ref(), format)
        .context("writing the content list")?;
    if !errors.is_empty() {
        return Err(UsageError(format!(
            "{} problem(s) in {}",
            errors.len(),
            ctx.content_dir.display()
        ))
        .into());
    }
    Ok(())
}

/// `apexsim track ...`.
///
/// # Errors
/// A usage error for a lap that cannot make a track or a name taken; I/O failures.
pub fn track(cmd: TrackCommand, ctx: &Context) -> anyhow::Result<()> {
    let TrackCommand::FromIbt {
        file,
        lap,
        name,
        width,
        format,
    } = cmd;
    let dir = &ctx.content_dir;
    let built = from_ibt(&file, lap, &name, width, dir).map_err(|e| match e {
        TrackBuildError::NoLap { .. }
        | TrackBuildError::NotClean { .. }
        | TrackBuildError::Exists(_) => anyhow::Error::new(UsageError(e.to_string())),
        other => anyhow::Error::new(other),
    })?;
    // The new track must load like any other content.
    let check = Content::load(dir);
    let problems: Vec<String> = check
        .errors
        .iter()
        .map(ToString::to_string)
        .filter(|e| e.contains(&name))
        .collect();
    if !problems.is_empty() {
        anyhow::bail!("the new track does not load: {}", problems.join("; "));
    }
    print_track_built(&built, format).context("writing the result")
}

#[derive(Serialize)]
struct ContentSummary<'a> {
    cars: Vec<(&'a str, &'a str, String)>,
    tracks: Vec<(&'a str, &'a str, f32, usize)>,
    templates: Vec<(&'a str, &'a str, bool)>,
    errors: Vec<String>,
    /// What the server on the data directory loaded last.
    server: Option<&'a ContentStatus>,
}

/// Prints what a content directory holds and every problem found in it.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_content(
    content: &Content,
    errors: &[String],
    server: Option<&ContentStatus>,
    format: Format,
) -> io::Result<()> {
    let summary = ContentSummary {
        cars: content
            .cars
            .iter()
            .map(|c| (c.slug.as_str(), c.name.as_str(), c.id.to_string()))
            .collect(),
        tracks: content
            .tracks
            .iter()
            .map(|t| {
                (
                    t.slug.as_str(),
                    t.name.as_str(),
                    t.geometry.length_m(),
                    t.geometry.grid_slots().len(),
                )
            })
            .collect(),
        templates: content
            .templates
            .iter()
            .map(|t| (t.slug.as_str(), t.name.as_str(), t.active))
            .collect(),
        errors: errors.to_vec(),
        server,
    };
    if format == Format::Json {
        return emit_json(&summary);
    }
    let mut text = table(
        &["Car", "Name", "Id"],
        &summary
            .cars
            .iter()
            .map(|(s, n, i)| vec![(*s).into(), (*n).into(), i.clone()])
            .collect::<Vec<_>>(),
    );
    text.push('\n');
    text += &table(
        &["Track", "Name", "Length (m)", "Grid"],
        &summary
            .tracks
            .iter()
            .map(|(s, n, l, g)| vec![(*s).into(), (*n).into(), format!("{l:.0}"), g.to_string()])
            .collect::<Vec<_>>(),
    );
    text.push('\n');
    text += &table(
        &["Template", "Name", "Active"],
        &summary
            .templates
            .iter()
            .map(|(s, n, a)| vec![(*s).into(), (*n).into(), a.to_string()])
            .collect::<Vec<_>>(),
    );
    for e in errors {
        text += &format!("error: {e}\n");
    }
    if let Some(s) = server {
        text += &format!(
            "\nserver on this data directory: {} reloads, last at {}; {} quarantined\n",
            s.reloads,
            s.loaded_at,
            s.quarantined.len()
        );
        for q in &s.quarantined {
            text += &format!(
                "quarantined {} {} (the previous version is in use): {}\n",
                q.kind, q.slug, q.error
            );
        }
    }
    emit(&text)
}

/// Prints a track built from a recording.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_track_built(t: &apexsim::ingest::track::BuiltTrack, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(t);
    }
    emit(&format!(
        "built {} in {}: {} points, {:.1} m (the recording's lap: {:.1} m), from lap {} ({})\n",
        t.name,
        t.dir.display(),
        t.points,
        t.length_m,
        t.recorded_length_m,
        t.lap,
        lap_time(t.lap_time_s)
    ))
}
