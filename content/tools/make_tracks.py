#!/usr/bin/env python3
"""Generates the bundled tracks' centerline.csv files from straights and arcs.

Each track is a list of segments: ("S", length_m) or ("L"/"R", angle_deg, radius_m). The turns
sum to +-360 degrees; two straights marked adjustable are lengthened or shortened so the loop
closes exactly. The result is sampled every STEP metres, starts at the start/finish line at the
origin heading +X (seed 003 coordinates), and is checked for self-intersection: any two points
more than 80 m apart along the track must be at least MIN_CLEARANCE metres apart.

Usage: python3 content/tools/make_tracks.py   (rewrites content/tracks/*/centerline.csv)
Standard library only.
"""
import math
import os

STEP = 2.5
MIN_CLEARANCE = 30.0

TRACKS = {
    # Simple oval: 2 x 300 m straights, two 180-degree turns of 100 m radius. Starts mid-straight.
    "oval_simple": [
        ("S", 150, "adj"), ("L", 180, 100), ("S", 300), ("L", 180, 100), ("S", 150),
    ],
    # Road course, about 3 km: slow and fast corners, left and right.
    "road_course_a": [
        ("S", 400, "adj"),          # main straight
        ("L", 90, 35),              # T1 slow left
        ("S", 200),
        ("R", 45, 140),             # T2 fast right kink
        ("S", 100),
        ("L", 135, 60),             # T3 medium left
        ("S", 250),
        ("L", 60, 220),             # T4 fast left sweeper
        ("S", 100),
        ("R", 60, 30),              # T5 slow right
        ("S", 100),
        ("L", 90, 55),              # T6 medium left
        ("S", 150, "adj"),
        ("L", 90, 28),              # T7 slow left onto the main straight
        ("S", 60),
    ],
    # Grand circuit, about 5 km: long straight, chicane, fast sweeper, hairpin.
    "grand_circuit": [
        ("S", 800, "adj"),          # main straight
        ("L", 90, 70),              # T1
        ("S", 350),
        ("R", 40, 30), ("L", 80, 30), ("R", 40, 30),   # chicane
        ("S", 300),
        ("L", 90, 100),             # T5
        ("S", 300),
        ("L", 70, 320),             # fast sweeper
        ("S", 150),
        ("R", 70, 150),
        ("S", 700),                 # back straight
        ("L", 180, 20),             # hairpin
        ("S", 150),
        ("R", 90, 60),
        ("S", 200, "adj"),
        ("L", 90, 60),              # last corner
        ("S", 150),                 # run to the line
    ],
}


def trace(segments, extra):
    """Walks the segments (with extra length on adjustable straights); returns dense points."""
    x = y = h = 0.0
    pts = [(x, y)]
    adj = 0
    for seg in segments:
        if seg[0] == "S":
            length = seg[1]
            if len(seg) > 2:
                length += extra[adj]
                adj += 1
            n = max(1, int(round(length / 0.5)))
            for i in range(1, n + 1):
                pts.append((x + math.cos(h) * length * i / n, y + math.sin(h) * length * i / n))
            x, y = pts[-1]
        else:
            sign = 1.0 if seg[0] == "L" else -1.0
            ang = math.radians(seg[1])
            r = seg[2]
            n = max(2, int(round(ang * r / 0.5)))
            cx, cy = x - sign * r * math.sin(h), y + sign * r * math.cos(h)
            for i in range(1, n + 1):
                hh = h + sign * ang * i / n
                pts.append((cx + sign * r * math.sin(hh), cy - sign * r * math.cos(hh)))
            h += sign * ang
            x, y = pts[-1]
    return pts


def close(segments):
    """Solves the two adjustable straights' extra lengths so the loop ends where it began."""
    extra = [0.0, 0.0]
    for _ in range(20):
        end = trace(segments, extra)[-1]
        if math.hypot(*end) < 1e-6:
            break
        # Numerical Jacobian of the end point in the two extras.
        cols = []
        for k in range(2):
            e = list(extra)
            e[k] += 1.0
            p = trace(segments, e)[-1]
            cols.append((p[0] - end[0], p[1] - end[1]))
        (a, c), (b, d) = cols
        det = a * d - b * c
        if abs(det) < 1e-9:
            raise SystemExit("adjustable straights are parallel")
        dx, dy = -end[0], -end[1]
        extra[0] += (d * dx - b * dy) / det
        extra[1] += (-c * dx + a * dy) / det
    return extra


def resample(pts, step):
    cum = [0.0]
    for a, b in zip(pts, pts[1:]):
        cum.append(cum[-1] + math.dist(a, b))
    total = cum[-1]
    n = int(round(total / step))
    out, j = [], 0
    for i in range(n):
        d = total * i / n
        while cum[j + 1] < d:
            j += 1
        t = (d - cum[j]) / (cum[j + 1] - cum[j])
        out.append((pts[j][0] + (pts[j + 1][0] - pts[j][0]) * t,
                    pts[j][1] + (pts[j + 1][1] - pts[j][1]) * t))
    return out, total


def check_clearance(name, pts, step):
    n = len(pts)
    window = int(80 / step)
    worst = float("inf")
    for i in range(n):
        for j in range(i + window, n):
            if (i + n - j) < window:
                continue
            worst = min(worst, math.dist(pts[i], pts[j]))
    if worst < MIN_CLEARANCE:
        raise SystemExit(f"{name}: centerline comes within {worst:.1f} m of itself")
    return worst


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tracks")
    for name, segments in TRACKS.items():
        extra = close(segments)
        for k, seg in enumerate(s for s in segments if len(s) > 2 and s[0] == "S"):
            if seg[1] + extra[k] < 20:
                raise SystemExit(f"{name}: adjustable straight would be {seg[1] + extra[k]:.1f} m")
        pts, total = resample(trace(segments, extra), STEP)
        clearance = check_clearance(name, pts, STEP)
        path = os.path.join(root, name, "centerline.csv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("x,y,distance_from_start\n")
            d = 0.0
            for i, p in enumerate(pts):
                if i:
                    d += math.dist(pts[i - 1], p)
                f.write(f"{p[0]:.3f},{p[1]:.3f},{d:.3f}\n")
        print(f"{name}: {total:.1f} m, {len(pts)} points, extra {extra[0]:+.1f}/{extra[1]:+.1f} m, "
              f"clearance {clearance:.1f} m")


if __name__ == "__main__":
    main()
