//! Content loading: the bundled content is valid, and each kind of bad file gets an error that
//! names the file, the line or field, and what is wrong, while the good files still load.

use std::fs;
use std::path::{Path, PathBuf};

use apexsim::content::{Content, ContentError};

fn bundled() -> PathBuf {
    crate::common::bundled_content()
}

/// A copy of the bundled content in a temporary directory.
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::common::copy_dir(&bundled(), dir.path());
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    fs::write(path, text.replacen(from, to, 1)).expect("write");
}

/// The first error of loading `dir`, its text, and the content that loaded. Any further
/// errors must be templates deactivated because the rejected file was theirs to reference.
fn only_error(dir: &Path) -> (ContentError, String, Content) {
    let report = Content::load(dir);
    assert!(!report.errors.is_empty(), "no error");
    let text = report.errors[0].to_string();
    for cascade in &report.errors[1..] {
        assert!(
            matches!(cascade, ContentError::UnknownReference { .. }),
            "unexpected second error: {report}"
        );
        let ContentError::UnknownReference { path, .. } = cascade else {
            unreachable!()
        };
        let slug = path.file_stem().and_then(|s| s.to_str()).expect("slug");
        assert!(!report.content.template(slug).expect("template").active);
    }
    let mut errors = report.errors;
    (errors.remove(0), text, report.content)
}

#[test]
fn bundled_content_is_valid() {
    let report = Content::load(&bundled());
    assert!(report.errors.is_empty(), "{report}");
    let c = report.content;
    assert_eq!(c.cars.len(), 2);
    // Three generated tracks and two built from iRacing recordings.
    assert_eq!(c.tracks.len(), 5);
    assert_eq!(c.templates.len(), 3);
    assert!(c.templates.iter().all(|t| t.active));
    let oval = c.track("Simple Oval").expect("by name");
    assert_eq!(oval.slug, "oval_simple");
    assert!((oval.geometry.length_m() - 1228.3).abs() < 1.0);
    assert!(
        c.car("550e8400-e29b-41d4-a716-446655440000").is_some(),
        "by id"
    );
}

#[test]
fn non_finite_number_names_file_line_and_field() {
    let dir = copy();
    let car = dir.path().join("cars/gt3_generic/car.toml");
    edit(&car, "mass_kg = 1300.0", "mass_kg = nan");
    let (err, text, content) = only_error(dir.path());
    assert!(
        matches!(err, ContentError::Field { ref field, line: 8, .. } if field == "physics.mass_kg"),
        "{text}"
    );
    assert!(
        text.contains("gt3_generic/car.toml:8") && text.contains("NaN is outside"),
        "{text}"
    );
    assert_eq!(content.cars.len(), 1, "the other car still loads");
}

#[test]
fn out_of_range_number_is_rejected() {
    let dir = copy();
    let car = dir.path().join("cars/formula_basic/car.toml");
    edit(
        &car,
        "max_steering_angle_rad = 0.4",
        "max_steering_angle_rad = 2.5",
    );
    let (_, text, _) = only_error(dir.path());
    assert!(text.contains("formula_basic/car.toml:15: field `physics.max_steering_angle_rad`: 2.5 is outside 0.05..=1.2"), "{text}");
}

#[test]
fn missing_and_unknown_fields_are_syntax_errors_with_a_line() {
    let dir = copy();
    let car = dir.path().join("cars/gt3_generic/car.toml");
    edit(&car, "wheelbase_m = 2.7", "wheelbase = 2.7");
    let (err, text, _) = only_error(dir.path());
    assert!(matches!(err, ContentError::Syntax { .. }), "{text}");
    assert!(text.contains("wheelbase"), "{text}");
}

#[test]
fn too_few_centerline_points() {
    let dir = copy();
    let csv = dir.path().join("tracks/oval_simple/centerline.csv");
    fs::write(&csv, "x,y,distance_from_start\n0,0,0\n10,0,10\n10,10,20\n").expect("write");
    let (err, text, content) = only_error(dir.path());
    assert!(matches!(err, ContentError::Centerline { .. }), "{text}");
    assert!(
        text.contains("oval_simple/centerline.csv: 3 points; a centerline needs at least 8"),
        "{text}"
    );
    assert_eq!(content.tracks.len(), 4);
}

#[test]
fn bad_centerline_row_names_its_line() {
    let dir = copy();
    let csv = dir.path().join("tracks/road_course_a/centerline.csv");
    let text = fs::read_to_string(&csv).expect("read");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[41] = "12.5,inf,100.0".into();
    fs::write(&csv, lines.join("\n")).expect("write");
    let (_, text, _) = only_error(dir.path());
    assert!(
        text.contains("centerline.csv:42: y \"inf\" is not a finite number"),
        "{text}"
    );
}

#[test]
fn distance_column_must_match_the_points() {
    let dir = copy();
    let csv = dir.path().join("tracks/oval_simple/centerline.csv");
    let text = fs::read_to_string(&csv).expect("read");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let fields: Vec<&str> = lines[100].split(',').collect();
    lines[100] = format!("{},{},{}", fields[0], fields[1], 9999.0);
    fs::write(&csv, lines.join("\n")).expect("write");
    let (_, text, _) = only_error(dir.path());
    assert!(
        text.contains("centerline.csv:101: distance_from_start 9999"),
        "{text}"
    );
}

#[test]
fn duplicate_ids_name_both_files() {
    let dir = copy();
    let formula = dir.path().join("cars/formula_basic/car.toml");
    edit(
        &formula,
        "550e8400-e29b-41d4-a716-446655440010",
        "550e8400-e29b-41d4-a716-446655440000",
    );
    let (err, text, content) = only_error(dir.path());
    assert!(matches!(err, ContentError::DuplicateId { .. }), "{text}");
    // Slugs load in order: formula_basic first, so gt3_generic is the duplicate.
    assert!(
        text.contains("gt3_generic/car.toml")
            && text.contains("already used by")
            && text.contains("formula_basic/car.toml"),
        "{text}"
    );
    assert_eq!(content.cars.len(), 1);
}

#[test]
fn unknown_references_deactivate_the_template() {
    let dir = copy();
    let t = dir.path().join("templates/gt3_sprint.toml");
    edit(
        &t,
        "track_config_id = \"660e8400-e29b-41d4-a716-446655440002\"",
        "track_config_id = \"660e8400-e29b-41d4-a716-44665544ffff\"",
    );
    let (err, text, content) = only_error(dir.path());
    assert!(
        matches!(
            err,
            ContentError::UnknownReference {
                kind: "track",
                line: 3,
                ..
            }
        ),
        "{text}"
    );
    let sprint = content.template("gt3_sprint").expect("still listed");
    assert!(!sprint.active, "inactive until the track appears");
}

#[test]
fn template_bounds_are_checked() {
    let dir = copy();
    let t = dir.path().join("templates/oval_open.toml");
    edit(&t, "default_ai_count = 15", "default_ai_count = 17");
    let (_, text, _) = only_error(dir.path());
    assert!(
        text.contains("oval_open.toml:6: field `default_ai_count`: 17 is outside 0..=16"),
        "{text}"
    );
}

#[test]
fn cli_content_check_exits_2_on_bad_content() {
    let dir = copy();
    edit(
        &dir.path().join("cars/gt3_generic/car.toml"),
        "grip_coefficient = 1.0",
        "grip_coefficient = -1.0",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apexsim"))
        .args(["--content", dir.path().to_str().expect("utf-8"), "content"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("physics.grip_coefficient"), "{stdout}");
}

#[test]
fn sectors_must_be_increasing_fractions() {
    let dir = copy();
    let track = dir.path().join("tracks/grand_circuit/track.toml");
    edit(
        &track,
        "sectors = [0.333, 0.667]",
        "sectors = [0.667, 0.333]",
    );
    let (_, text, content) = only_error(dir.path());
    assert!(
        text.contains("grand_circuit/track.toml:8: field `sectors`"),
        "{text}"
    );
    assert!(text.contains("increasing"), "{text}");
    assert!(!content.tracks.iter().any(|t| t.slug == "grand_circuit"));
    let good = Content::load(&bundled()).content;
    let oval = good.track("oval_simple").expect("oval");
    assert_eq!(oval.sectors, vec![0.5]);
}

#[test]
fn a_reload_quarantines_a_broken_file_keeps_its_previous_version_and_recovers() {
    let dir = copy();
    let first = Content::load(dir.path()).content;
    let gt3 = dir.path().join("cars/gt3_generic/car.toml");
    let good = fs::read_to_string(&gt3).expect("read");
    edit(&gt3, "mass_kg = ", "mass_kg = = ");
    let report = Content::reload(dir.path(), &first);
    let text = report.to_string();
    assert!(text.contains("car.toml:"), "file and line: {text}");
    let q = &report.content.quarantined;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].kind, q[0].slug.as_str()), ("car", "gt3_generic"));
    assert!(
        q[0].error.contains(&format!("{}:", gt3.display())),
        "{}",
        q[0].error
    );
    let kept = report
        .content
        .car("gt3_generic")
        .expect("the old car stays");
    assert_eq!(kept.spec, first.car("gt3_generic").expect("gt3").spec);
    assert!(
        report
            .content
            .template("gt3_sprint")
            .expect("sprint")
            .active,
        "templates of a quarantined car stay active"
    );
    // A new file that never loaded is an error but not quarantined: nothing to keep.
    fs::create_dir_all(dir.path().join("cars/broken")).expect("dir");
    fs::write(dir.path().join("cars/broken/car.toml"), "id = ").expect("write");
    let report = Content::reload(dir.path(), &report.content);
    assert_eq!(report.content.quarantined.len(), 1);
    assert!(report.content.car("broken").is_none());
    fs::remove_dir_all(dir.path().join("cars/broken")).expect("rm");

    // Fixed, heavier: the new version loads, nothing quarantined.
    fs::write(
        &gt3,
        good.replacen("mass_kg = 1300.0", "mass_kg = 1400.0", 1),
    )
    .expect("write");
    let fixed = Content::reload(dir.path(), &report.content);
    assert!(fixed.errors.is_empty(), "{fixed}");
    assert!(fixed.content.quarantined.is_empty());
    assert_eq!(
        fixed.content.car("gt3_generic").expect("gt3").spec.mass_kg,
        1400.0
    );

    // A template whose track is deleted turns inactive, and comes back with it.
    let road = dir.path().join("tracks/road_course_a");
    let aside = dir.path().join("road_course_a.aside");
    fs::rename(&road, &aside).expect("move the track away");
    let gone = Content::reload(dir.path(), &fixed.content);
    assert!(
        gone.content.track("road_course_a").is_none(),
        "a deleted track goes"
    );
    assert!(!gone.content.template("gt3_sprint").expect("listed").active);
    fs::rename(&aside, &road).expect("move it back");
    let back = Content::reload(dir.path(), &gone.content);
    assert!(back.content.template("gt3_sprint").expect("listed").active);
}

#[test]
fn a_bad_schedule_and_bad_override_ranges_are_named() {
    let dir = copy();
    let t = dir.path().join("templates/formula_endurance.toml");
    edit(&t, "schedule = \"0 20 * * 6\"", "schedule = \"0 25 * * 6\"");
    let (_, text, _) = only_error(dir.path());
    assert!(
        text.contains("formula_endurance.toml:9: field `schedule`: \"0 25 * * 6\""),
        "{text}"
    );
    let dir = copy();
    let t = dir.path().join("templates/formula_endurance.toml");
    edit(&t, "schedule = \"0 20 * * 6\"", "schedule = \"0 0 31 2 *\"");
    let (_, text, _) = only_error(dir.path());
    assert!(
        text.contains("field `schedule`: \"0 0 31 2 *\" never matches a time from now on"),
        "{text}"
    );
    let dir = copy();
    let t = dir.path().join("templates/gt3_sprint.toml");
    edit(&t, "lap_limit_range = [3, 15]", "lap_limit_range = [6, 15]");
    let (_, text, _) = only_error(dir.path());
    assert!(
        text.contains("gt3_sprint.toml:10: field `lap_limit_range`: [6, 15] must be a range within 1..=99 holding the default 5"),
        "{text}"
    );
}
