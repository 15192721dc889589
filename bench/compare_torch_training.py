#!/usr/bin/env python3
"""Side by side: a `segloss train` epoch and the same epoch in PyTorch + MONAI, same machine, same run.

For each row (a set of `segloss train` settings) the script runs `segloss train` and its PyTorch
twin, each in a fresh process, one after the other, `--runs` times, with the same number of
threads (RAYON_NUM_THREADS=T for segloss, torch.set_num_threads(T) in the twin), f32 in both.
It prints the median epoch time of each tool, their ratio (PyTorch / segloss: above 1 means
segloss is faster), and the peak resident memory of each process (GNU time's %M of the command,
which needs /usr/bin/time: `apt-get install time`).

What an epoch is, in both tools: `--steps-per-epoch` Adam steps (lr 1e-2, Burn's default
epsilon 1e-5 in both) on batches of `--batch-size` procedural volumes generated at that step
(class 1 a large blob, class 2 two medium ellipsoids, classes 3.. a few small spheres, Gaussian
intensity noise around a mean per class; the twin reimplements the generator of
`crates/segloss-train/src/data.rs` in NumPy with its own random numbers: same sizes and kind of
content, not the same voxels), then a forward of each of the 8 validation volumes with the
argmax and the pooled foreground Dice, then the weights saved to a checkpoint file. segloss's
time is its own `seconds` column of metrics.csv (which covers exactly that); the twin times the
same span. The first epoch of each process (compilation of kernels, allocator warm-up) is left
out when there are at least two: each run's value is the median of its later epochs.

The twin, layer for layer the network of `crates/segloss-train/src/unet.rs`: per level two 3x3x3
convolutions (padding 1, bias), each followed by InstanceNorm3d(affine) and LeakyReLU(0.01), the
first of levels below the top with stride 2; the decoder a 2x2x2 stride-2 transposed convolution,
the skip concatenated after it, and the same two convolutions; a 1x1x1 head. The loss is MONAI's
DiceCELoss(softmax=True, to_onehot_y=True, include_background=False), as `segloss train --loss
dice-ce` (the default) builds its DiceCELoss.

usage: python3 bench/compare_torch_training.py [--rows NAME,...] [--epochs E] [--runs R]
                                               [--threads T] [--segloss PATH] [--markdown]
needs: pip install torch monai; a release build of the CLI (cargo build --release -p segloss-cli)
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from compare_monai import cpu_name

# name: segloss train settings (the others at their defaults: depth 3, 4 classes, batch 2,
# 16 steps per epoch, lr 1e-2, loss dice-ce).
ROWS = {
    "defaults": {"width": 4, "size": 32},
    "width16_32^3": {"width": 16, "size": 32},
    "width16_64^3": {"width": 16, "size": 64},
}
COMMON = {"depth": 3, "classes": 4, "batch": 2, "steps": 16, "lr": 1e-2, "valid": 8}


GNU_TIME = "/usr/bin/time"


def run_child(cmd, env):
    """Runs `cmd`; returns (exit status, stdout, stderr, peak resident MiB of that process).

    The peak is GNU time's %M for the command: the process it forks from its own small image.
    `os.wait4` on a child of this script would not do: a child's maximum resident size counts
    the memory it had before `exec`, a copy of this Python process with torch imported (about
    520 MiB), so every tool would read at least that.
    """
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"needs GNU time at {GNU_TIME} (apt-get install time) to measure each process's peak memory")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        p = subprocess.run([GNU_TIME, "-f", "%M", "-o", peak.name, *cmd], stdout=out, stderr=err, env=env)
        out.seek(0)
        err.seek(0)
        kib = peak.read().strip().splitlines()
        rss = float(kib[-1]) / 1024.0 if kib and kib[-1].isdigit() else float("nan")
        return p.returncode, out.read().decode(), err.read().decode(), rss


def epoch_median(seconds):
    later = seconds[1:] if len(seconds) >= 2 else seconds
    return statistics.median(later)


def segloss_run(binary, row, epochs, threads):
    settings = ROWS[row]
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "train", "--out", out, "--overwrite", "--epochs", str(epochs),
               "--width", str(settings["width"]), "--size", str(settings["size"]),
               "--depth", str(COMMON["depth"]), "--batch-size", str(COMMON["batch"]),
               "--steps-per-epoch", str(COMMON["steps"]), "--lr", str(COMMON["lr"]),
               "--loss", "dice-ce", "--device", "cpu"]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        status, _, err, rss = run_child(cmd, env)
        if status != 0:
            sys.exit(f"segloss train failed ({status}): {err.strip()[-500:]}")
        with open(os.path.join(out, "metrics.csv")) as f:
            header = f.readline().strip().split(",")
            col = header.index("seconds")
            dice_col = header.index("mean_foreground_dice")
            rows = [line.strip().split(",") for line in f if line.strip()]
        seconds = [float(r[col]) for r in rows]
        return {"seconds": seconds, "epoch_s": epoch_median(seconds), "rss_mib": rss,
                "dice": float(rows[-1][dice_col])}


def twin_run(row, epochs, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--twin", row, "--epochs", str(epochs),
           "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    status, out, err, rss = run_child(cmd, env)
    if status != 0:
        sys.exit(f"the PyTorch twin failed ({status}): {err.strip()[-500:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["epoch_s"] = epoch_median(r["seconds"])
    r["rss_mib"] = rss
    return r


# ------------------------------------------------------------------------------------------------
# The PyTorch twin (runs in its own process: `--twin ROW`).

def volume(rng, size, classes, noise=0.5, sphere_radius=(1.5, 2.5)):
    """One procedural volume (image, labels), as crates/segloss-train/src/data.rs builds it."""
    import numpy as np

    s = float(size)
    labels = np.zeros((size, size, size), dtype=np.uint8)
    grid = np.indices((size, size, size), dtype=np.float32)

    def paint(cls, centre, radii):
        lo = [max(int(np.floor(c - r)), 0) for c, r in zip(centre, radii)]
        hi = [min(int(np.ceil(c + r)), size - 1) + 1 for c, r in zip(centre, radii)]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = sum(((grid[k][sl] - centre[k]) / radii[k]) ** 2 for k in range(3))
        labels[sl][d <= 1.0] = cls

    paint(1, [s * rng.uniform(0.4, 0.6) for _ in range(3)], [s * rng.uniform(0.22, 0.32) for _ in range(3)])
    if classes > 2:
        for _ in range(2):
            paint(2, [s * rng.uniform(0.15, 0.85) for _ in range(3)], [s * rng.uniform(0.08, 0.12) for _ in range(3)])
    for cls in range(3, classes):
        for _ in range(rng.integers(3, 6)):
            r = rng.uniform(*sphere_radius)
            paint(cls, [s * rng.uniform(0.1, 0.9) for _ in range(3)], [r, r, r])
    means = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0], dtype=np.float32)
    image = means[labels] + noise * rng.standard_normal(labels.shape).astype(np.float32)
    return image.astype(np.float32), labels


def twin(row, epochs, threads):
    import numpy as np
    import torch
    from monai.losses import DiceCELoss
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    settings = ROWS[row]
    width, size = settings["width"], settings["size"]
    depth, classes, batch, steps = COMMON["depth"], COMMON["classes"], COMMON["batch"], COMMON["steps"]

    def block(cin, cout, stride):
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm3d(cout, affine=True),
            nn.LeakyReLU(0.01),
            nn.Conv3d(cout, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [width << level for level in range(depth)]
            self.enc = nn.ModuleList()
            cin = 1
            for level, w in enumerate(widths):
                self.enc.append(block(cin, w, 1 if level == 0 else 2))
                cin = w
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            for level in reversed(range(depth - 1)):
                self.up.append(nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2))
                self.dec.append(block(2 * widths[level], widths[level], 1))
            self.head = nn.Conv3d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for e in self.enc:
                x = e(x)
                skips.append(x)
            skips.pop()
            for up, dec in zip(self.up, self.dec):
                x = dec(torch.cat([up(x), skips.pop()], 1))
            return self.head(x)

    model = UNet()
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False)
    optim = torch.optim.Adam(model.parameters(), lr=COMMON["lr"], eps=1e-5)
    train_volumes = 32
    seconds = []
    dice = float("nan")
    with tempfile.TemporaryDirectory() as out:
        for epoch in range(epochs):
            start = time.perf_counter()
            model.train()
            for step in range(steps):
                images, labels = [], []
                for j in range(batch):
                    index = ((epoch * steps + step) * batch + j) % train_volumes
                    img, lab = volume(np.random.default_rng([1, 0, index]), size, classes)
                    images.append(img)
                    labels.append(lab)
                x = torch.from_numpy(np.stack(images)[:, None])
                y = torch.from_numpy(np.stack(labels)[:, None].astype(np.int64))
                optim.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optim.step()
                loss.item()
            model.eval()
            inter = np.zeros(classes)
            total = np.zeros(classes)
            with torch.no_grad():
                for i in range(COMMON["valid"]):
                    img, lab = volume(np.random.default_rng([1, 1, i]), size, classes)
                    pred = model(torch.from_numpy(img[None, None])).argmax(1)[0].numpy()
                    for c in range(1, classes):
                        p, r = pred == c, lab == c
                        inter[c] += np.sum(p & r)
                        total[c] += np.sum(p) + np.sum(r)
            dices = [2 * inter[c] / total[c] for c in range(1, classes) if total[c] > 0]
            dice = float(np.mean(dices)) if dices else float("nan")
            torch.save(model.state_dict(), os.path.join(out, f"epoch-{epoch + 1}.pt"))
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "dice": dice}))


# ------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="segloss train against its PyTorch + MONAI twin, per epoch")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per process (the first is left out)")
    ap.add_argument("--runs", type=int, default=2, help="processes per tool and row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--segloss", default="target/release/segloss", help="the segloss binary")
    ap.add_argument("--markdown", action="store_true", help="print only a caption line and the table")
    ap.add_argument("--twin", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.twin:
        return twin(a.twin, a.epochs, a.threads)
    rows = a.rows.split(",")
    for r in rows:
        if r not in ROWS:
            sys.exit(f"unknown row {r!r}: the rows are {', '.join(ROWS)}")
    if not os.path.exists(a.segloss):
        sys.exit(f"missing {a.segloss}: run `cargo build --release -p segloss-cli` first")
    import torch
    import monai

    say = (lambda *v: print(*v, file=sys.stderr, flush=True)) if a.markdown else print
    command = "python3 " + " ".join([os.path.relpath(os.path.abspath(__file__), os.getcwd())] + sys.argv[1:])
    caption = (f"`{command}`, {datetime.datetime.now():%Y-%m-%d %H:%M}, {cpu_name()}, {os.cpu_count()} CPUs: "
               f"`segloss train` against PyTorch {torch.__version__.split('+')[0]} + MONAI {monai.__version__}, "
               f"{a.threads} threads for both, f32; each epoch time is the median over {a.runs} run(s) of a "
               f"process's median epoch (epochs 2..{a.epochs} of {a.epochs}); ratio = PyTorch / segloss "
               f"(above 1: segloss faster); peak MiB: the process's maximum resident memory, the largest over the runs.")
    say(caption)
    results = []
    for row in rows:
        seg, tw = [], []
        for run in range(a.runs):
            s = segloss_run(a.segloss, row, a.epochs, a.threads)
            t = twin_run(row, a.epochs, a.threads)
            seg.append(s)
            tw.append(t)
            say(f"  run {run + 1}/{a.runs}  {row}: segloss {s['epoch_s']:.2f} s/epoch ({s['rss_mib']:.0f} MiB, "
                f"Dice {s['dice']:.3f}), PyTorch {t['epoch_s']:.2f} s/epoch ({t['rss_mib']:.0f} MiB, Dice {t['dice']:.3f}), "
                f"ratio {t['epoch_s'] / s['epoch_s']:.2f}")
        ms = statistics.median(x["epoch_s"] for x in seg)
        mt = statistics.median(x["epoch_s"] for x in tw)
        ratios = [t["epoch_s"] / s["epoch_s"] for s, t in zip(seg, tw)]
        results.append((row, ms, mt, mt / ms, min(ratios), max(ratios),
                        max(x["rss_mib"] for x in seg), max(x["rss_mib"] for x in tw)))
    settings = lambda r: f"width {ROWS[r]['width']}, {ROWS[r]['size']}^3"
    print("" if not a.markdown else caption + "\n")
    print("| row | settings | segloss s/epoch | PyTorch s/epoch | ratio | ratio range | segloss peak MiB | PyTorch peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row, ms, mt, ratio, lo, hi, rs, rt in results:
        print(f"| {row} | {settings(row)} | {ms:.2f} | {mt:.2f} | {ratio:.2f}x | {lo:.2f}x-{hi:.2f}x | {rs:.0f} | {rt:.0f} |")
    print(f"\nCommon settings: depth {COMMON['depth']}, {COMMON['classes']} classes, batch {COMMON['batch']}, "
          f"{COMMON['steps']} Adam steps per epoch (lr {COMMON['lr']}), {COMMON['valid']} validation volumes, "
          "loss Dice + CE (softmax, no background), one checkpoint per epoch.")


if __name__ == "__main__":
    main()
