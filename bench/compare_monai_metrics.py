#!/usr/bin/env python3
"""Side-by-side timing of MONAI and `segloss eval`: Dice, HD95, ASSD and NSD for all labels.

Two cases, measured in the same run:
  * mni: the MNI ICBM152 tissue pair (197 x 233 x 189, labels 1 and 2, 1 mm), from the repo's
    test fixtures;
  * ct: a synthetic CT-sized pair (512 x 512 x 300 voxels, spacing 0.8 x 0.8 x 1.5 mm, three
    labels: two nested ellipsoids and a small ball, the prediction shifted/scaled plus a
    false-positive block), written once to --work-dir.

Each tool runs in its own process under `/usr/bin/time -v` for its peak resident memory, --repeat
times (default 3) alternating MONAI and segloss; the table gives the median time of each and
the largest peak memory.
MONAI's time is measured with time.perf_counter around the metric calls only (the NIfTI files are
already loaded and one-hot encoded, Python imports excluded): the most favourable view of MONAI.
segloss's time is the wall time of the whole `segloss eval` process, NIfTI reading and
decompression included. The MONAI calls are those of `expected_metrics.json`: DiceMetric,
HausdorffDistanceMetric(percentile=95), SurfaceDistanceMetric(symmetric=True),
SurfaceDiceMetric(tolerance 1 mm), include_background=False, with the header spacing.

Needs: pip install torch monai scipy nibabel; a release build of segloss
(cargo build --release -p segloss-cli). Usage, from the repository root:

    python3 bench/compare_monai_metrics.py [--segloss target/release/segloss] [--work-dir DIR]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "crates", "segloss-metrics", "tests", "fixtures")


def load(path):
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    return np.asarray(img.dataobj).astype(np.int64), [float(s) for s in img.header.get_zooms()[:3]]


def monai_worker(pred_path, ref_path):
    """Runs in a child process: prints a JSON line with MONAI's seconds and values."""
    import numpy as np
    import torch
    from monai import metrics as M
    from monai.networks.utils import one_hot

    torch.set_num_threads(os.cpu_count() or 1)
    pred, spacing = load(pred_path)
    ref, _ = load(ref_path)
    n = int(max(pred.max(), ref.max())) + 1
    yp = one_hot(torch.from_numpy(pred)[None, None], num_classes=n)
    yt = one_hot(torch.from_numpy(ref)[None, None], num_classes=n)
    t0 = time.perf_counter()
    dice = M.DiceMetric(include_background=False, reduction="none")(yp, yt)
    hd95 = M.HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(yp, yt, spacing=spacing)
    assd = M.SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")(yp, yt, spacing=spacing)
    nsd = M.SurfaceDiceMetric([1.0] * (n - 1), include_background=False, reduction="none")(yp, yt, spacing=spacing)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "labels": list(range(1, n))}
    for k, v in [("dice", dice), ("hd95", hd95), ("assd", assd), ("nsd@1", nsd)]:
        out[k] = [float(x) for x in v[0].tolist()]
    print(json.dumps(out))


def make_ct(work_dir):
    """Writes the synthetic CT-sized pair once (uint8 labels, NIfTI axes x, y, z)."""
    import nibabel as nib
    import numpy as np

    pred_path = os.path.join(work_dir, "ct_prediction.nii.gz")
    ref_path = os.path.join(work_dir, "ct_reference.nii.gz")
    if os.path.exists(pred_path) and os.path.exists(ref_path):
        return pred_path, ref_path
    nx, ny, nz = 512, 512, 300
    sx, sy, sz = 0.8, 0.8, 1.5
    x = (np.arange(nx) * sx)[:, None]
    y = (np.arange(ny) * sy)[None, :]

    def volume(shapes):
        vol = np.zeros((nx, ny, nz), np.uint8)
        for k in range(nz):
            zz = k * sz
            for label, (c, r) in shapes:
                inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((zz - c[2]) / r[2]) ** 2 <= 1.0
                vol[:, :, k][inside] = label
        return vol

    ref = volume([(1, ((200, 200, 225), (140, 120, 170))), (2, ((190, 210, 230), (60, 50, 70))),
                  (3, ((290, 150, 180), (15, 15, 15)))])
    pred = volume([(1, ((202, 198, 228), (138, 122, 168))), (2, ((193, 208, 226), (58, 52, 72))),
                   (3, ((292, 151, 181), (14, 16, 15)))])
    pred[400:410, 400:410, 100:104] = 2  # a false-positive block
    affine = np.diag([sx, sy, sz, 1.0])
    nib.save(nib.Nifti1Image(ref, affine), ref_path)
    nib.save(nib.Nifti1Image(pred, affine), pred_path)
    return pred_path, ref_path


def timed(cmd):
    """Runs cmd under /usr/bin/time -v; returns (wall seconds, peak RSS MiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    return wall, rss, p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segloss", default=os.path.join(ROOT, "target", "release", "segloss"))
    ap.add_argument("--work-dir", default="/tmp/segloss-bench")
    ap.add_argument("--cases", default="mni,ct", help="comma-separated subset of mni,ct")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool per case (median reported)")
    ap.add_argument("--monai-worker", nargs=2, metavar=("PRED", "REF"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.monai_worker:
        monai_worker(*a.monai_worker)
        return
    os.makedirs(a.work_dir, exist_ok=True)
    cases = {}
    wanted = a.cases.split(",")
    if "mni" in wanted:
        cases["mni 197x233x189"] = (os.path.join(FIXTURES, "mni_tissue_prediction.nii.gz"),
                                    os.path.join(FIXTURES, "mni_tissue_reference.nii.gz"))
    if "ct" in wanted:
        cases["ct 512x512x300"] = make_ct(a.work_dir)
    rows = []
    for name, (pred, ref) in cases.items():
        m_times, m_walls, m_rsss, s_walls, s_rsss = [], [], [], [], []
        for _ in range(a.repeat):
            m_wall, m_rss, m_out = timed([sys.executable, os.path.abspath(__file__), "--monai-worker", pred, ref])
            monai = json.loads(m_out.strip().splitlines()[-1])
            s_wall, s_rss, s_out = timed([a.segloss, "eval", pred, ref, "--metrics", "dice,hd95,assd,nsd",
                                          "--nsd-tolerance", "1", "--format", "json", "--no-progress"])
            m_times.append(monai["seconds"])
            m_walls.append(m_wall)
            m_rsss.append(m_rss)
            s_walls.append(s_wall)
            s_rsss.append(s_rss)
        seg = json.loads(s_out)["cases"][0]["labels"]
        worst = 0.0
        for i, label in enumerate(monai["labels"]):
            got = next(l for l in seg if l["label"] == label)["metrics"]
            for k in ["dice", "hd95", "assd", "nsd@1"]:
                w, g = monai[k][i], got[k]
                worst = max(worst, abs(g - w) / max(abs(w), 1e-12))
        med = statistics.median
        rows.append((name, med(m_times), med(m_walls), max(m_rsss), med(s_walls), max(s_rsss), worst))
        print(f"{name}: MONAI metric times {['%.2f' % t for t in m_times]}, "
              f"segloss times {['%.3f' % t for t in s_walls]}", file=sys.stderr)
    print("| case | MONAI metric time (s) | MONAI process (s) | MONAI peak RSS (MiB) | segloss eval (s) "
          "| segloss peak RSS (MiB) | speed-up vs MONAI metric time | speed-up vs MONAI process | max rel. diff of values |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, mt, mw, mr, sw, sr, worst in rows:
        print(f"| {name} | {mt:.2f} | {mw:.2f} | {mr:.0f} | {sw:.3f} | {sr:.0f} | {mt / sw:.1f}x | {mw / sw:.1f}x "
              f"| {worst:.1e} |")


if __name__ == "__main__":
    main()
