#!/usr/bin/env python3
"""Reads an archive's `laps/` with Spark and DuckDB, as a league's analysts would, and checks
what they see against what `apexsim` itself says of the same archive.

    tools/engines/check.py APEXSIM ARCHIVE [--engine spark|duckdb ...]

Both engines read the Hive-partitioned layout (`source=`, `track=`, `date=` directories) with
no help from apexsim: the partitions come from the paths, the columns from the files. Per
session, car and lap they must find the laps `apexsim archive ls` lists, each with its row
count; each complete lap's last `lap_time_s` sample within one sample period of the lap's
official time; each lap's top speed the same as `apexsim analyze` measured. The lap count per
track and car must match `analyze`'s summary. Exits non-zero naming every difference.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# A lap's `lap_time_s` is 0 at its first sample, at most one sample period after the line, and
# its last sample is at most one period before the next crossing (60 Hz for iRacing
# recordings, 240 Hz for simulated laps); the official time is interpolated at the line.
SAMPLE_PERIOD_S = {"sim": 1 / 240, "iracing": 1 / 60}


def apexsim(binary, archive, *args):
    out = subprocess.run(
        [binary, "--data", archive, *args, "--format", "json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def expected(binary, archive):
    """What apexsim says: per (session, car, lap) the index's row and analyze's lap row."""
    listing = apexsim(binary, archive, "archive", "ls")
    analysis = apexsim(binary, archive, "analyze")
    sessions = {s["id"]: s for s in listing["sessions"]}
    laps = {}
    for lap in listing["laps"]:
        s = sessions[lap["session"]]
        laps[(lap["session"], lap["car"], lap["lap"])] = dict(
            lap, source=s["source"], track=s["track"])
    measured = {(r["session"], r["car"], r["lap"]): r for r in analysis["laps"]}
    summary = {(r["track"], r["car_model"]): r["laps"] for r in analysis["summary"]}
    return laps, measured, summary


def spark_laps(laps_dir):
    from pyspark.sql import SparkSession, functions as F
    spark = (SparkSession.builder.master("local[2]").appName("apexsim-archive-check")
             .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "4")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.read.option("basePath", laps_dir).parquet(laps_dir)
        schema = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        rows = (df.groupBy("source", "track", "date", "session", "car", "lap")
                .agg(F.count(F.lit(1)).alias("rows"),
                     F.max("lap_time_s").alias("last_lap_time_s"),
                     F.max("speed_mps").alias("top_speed_mps"),
                     F.first("driver").alias("driver"))
                .collect())
        return schema, [r.asDict() for r in rows]
    finally:
        spark.stop()


def duckdb_laps(laps_dir):
    import duckdb
    con = duckdb.connect()
    glob = os.path.join(laps_dir, "**", "*.parquet")
    rel = con.sql(f"select * from read_parquet('{glob}', hive_partitioning = true)")
    schema = dict(zip(rel.columns, (str(t) for t in rel.types)))
    q = con.sql(f"""
        select source, track, date, session, car, lap, count(*) as rows,
               max(lap_time_s) as last_lap_time_s, max(speed_mps) as top_speed_mps,
               first(driver) as driver
        from read_parquet('{glob}', hive_partitioning = true)
        group by all""")
    names = q.columns
    return schema, [dict(zip(names, r)) for r in q.fetchall()]


def compare(engine, found, laps, measured, summary):
    problems = []
    seen = {}
    for r in found:
        key = (r["session"], int(r["car"]), int(r["lap"]))
        if key in seen:
            problems.append(f"{engine}: lap {key} appears twice")
        seen[key] = r
    for key in sorted(set(laps) - set(seen)):
        problems.append(f"{engine}: lap {key} of the index is not in the files")
    for key in sorted(set(seen) - set(laps)):
        problems.append(f"{engine}: lap {key} is in the files but not in the index")
    for key in sorted(set(laps) & set(seen)):
        want, got = laps[key], seen[key]
        if got["rows"] != want["rows"]:
            problems.append(f"{engine}: lap {key} has {got['rows']} rows, the index says {want['rows']}")
        if got["source"] != want["source"] or got["track"] != want["track"]:
            problems.append(f"{engine}: lap {key} is partitioned under {got['source']}/{got['track']}, "
                            f"the index says {want['source']}/{want['track']}")
        if got["driver"] != want["driver"]:
            problems.append(f"{engine}: lap {key} driver {got['driver']!r}, the index says {want['driver']!r}")
        official = want["lap_time_s"]
        if want["complete"] and official is not None:
            gap = official - float(got["last_lap_time_s"])
            period = SAMPLE_PERIOD_S.get(want["source"], 1 / 60)
            if not -1e-3 <= gap <= 2 * period + 1e-3:
                problems.append(f"{engine}: lap {key} ends at {got['last_lap_time_s']:.4f} s, "
                                f"the official time is {official:.4f} s")
        m = measured.get(key)
        if m is not None and abs(float(got["top_speed_mps"]) - m["top_speed_mps"]) > 1e-4:
            problems.append(f"{engine}: lap {key} top speed {got['top_speed_mps']} m/s, "
                            f"analyze says {m['top_speed_mps']}")
    per_track_car = {}
    for key in seen:
        if key in measured:
            m = measured[key]
            tc = (m["track"], m["car_model"])
            per_track_car[tc] = per_track_car.get(tc, 0) + 1
    for tc, n in sorted(summary.items()):
        if per_track_car.get(tc, 0) != n:
            problems.append(f"{engine}: {tc} has {per_track_car.get(tc, 0)} laps in the files, "
                            f"analyze's summary says {n}")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("apexsim")
    ap.add_argument("archive")
    ap.add_argument("--engine", action="append", choices=["spark", "duckdb"])
    args = ap.parse_args()
    engines = args.engine or ["spark", "duckdb"]
    archive = os.path.abspath(args.archive)
    laps_dir = os.path.join(archive, "laps")
    laps, measured, summary = expected(args.apexsim, archive)
    if not laps:
        sys.exit(f"{archive}: the archive has no laps to check")
    problems = []
    for engine in engines:
        start = time.monotonic()
        schema, found = (spark_laps if engine == "spark" else duckdb_laps)(laps_dir)
        for col in ("source", "track", "date"):
            if col not in schema:
                problems.append(f"{engine}: the partition column {col} was not discovered")
        problems += compare(engine, found, laps, measured, summary)
        print(f"{engine}: {len(found)} laps, {sum(int(r['rows']) for r in found)} rows, "
              f"{len(schema)} columns (tick {schema.get('tick')}, date {schema.get('date')}) "
              f"in {time.monotonic() - start:.1f} s; index: {len(laps)} laps")
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
