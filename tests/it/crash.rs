//! Crash safety: `apexsim race` runs (at four times real time) as a child process and is killed
//! with SIGKILL two flushes after its log shows every car's first lap closed; the next start
//! recovers its write-ahead file. Every Parquet file must be readable,
//! every lap finalised before the kill must still be there, and each car's rows must run without
//! a gap up to at least the last flush the child reported (so fewer than 60 ticks are lost).

use std::fs;
use std::process::Command;

use apexsim::archive::index::Index;
use apexsim::archive::read_lap;

#[test]
fn sigkill_mid_race_loses_less_than_one_flush() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let content = tmp.path().join("content");
    let data = tmp.path().join("data");
    crate::common::content_with_mini_oval(&content);
    let exe = env!("CARGO_BIN_EXE_apexsim");
    // Four times real time: a lap of about 15 s takes about 4 s.
    let mut child = crate::common::Child::spawn(&[
        "--content",
        content.to_str().expect("utf-8"),
        "--data",
        data.to_str().expect("utf-8"),
        "race",
        "--track",
        "mini_oval",
        "--cars",
        "3",
        "--laps",
        "20",
        "--speed",
        "4",
    ]);
    // Kill the child two flushes after every car's lap 1 closed, as its log shows them.
    let last_flush = child.kill_after_first_laps(3, 2);
    let wal_files: Vec<_> = fs::read_dir(data.join("wal")).expect("wal dir").collect();
    assert_eq!(
        wal_files.len(),
        1,
        "the killed race left its write-ahead file"
    );

    // Restart: any command that opens the archive recovers.
    let out = Command::new(exe)
        .args(["--data", data.to_str().expect("utf-8"), "archive", "ls"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_dir(data.join("wal")).expect("wal dir").count(), 0);

    let index = Index::open(&data).expect("index");
    let laps = index.laps(None).expect("laps");
    for car in 0..3u8 {
        let mine: Vec<_> = laps.iter().filter(|l| l.car == car).collect();
        assert!(
            mine.iter().any(|l| l.lap == 1 && l.complete && l.valid),
            "car {car}: lap 1, finished before the kill, is archived: {mine:?}"
        );
        assert!(
            mine.iter().any(|l| !l.complete && l.lap >= 2),
            "car {car}: the lap in progress was recovered as partial: {mine:?}"
        );
        let mut ticks = Vec::new();
        for lap in &mine {
            let (_, columns) = read_lap(&data.join(&lap.file)).expect("every file is readable");
            assert_eq!(columns.len() as u64, lap.rows);
            ticks.extend(columns.tick);
        }
        ticks.sort_unstable();
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "car {car}: rows run without a gap"
        );
        let max = *ticks.last().expect("rows");
        assert!(
            max >= last_flush,
            "car {car}: rows up to tick {max}, the last flush before the kill was {last_flush}"
        );
    }
    // Nothing half-written anywhere.
    let mut stack = vec![data.join("laps")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(dir).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert!(
                    p.extension().is_some_and(|e| e == "parquet"),
                    "unexpected file {}",
                    p.display()
                );
            }
        }
    }
}
