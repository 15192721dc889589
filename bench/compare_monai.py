#!/usr/bin/env python3
"""Side by side: MONAI 1.6.1 (PyTorch) and segloss, forward + backward of every segloss loss.

Same machine, same run, same thread count (torch.set_num_threads(T) in MONAI's process,
RAYON_NUM_THREADS=T in segloss's), f32 in both. For every named shape and loss, and for each of
`--runs` repetitions of the whole comparison (one after the other, every row in each), it takes
the median time of `--iters` forward + backward (gradient with respect to the logits) for MONAI
and for segloss (`loss_bench`, the library's public API with its automatic kernel choice), the
memory-traffic floor measured in segloss's process, and the peak resident memory that the first
full-size forward + backward adds beyond the inputs, read from the OS (Linux VmHWM, reset just
before through /proc/self/clear_refs). Before it both processes run one step of the same loss on
a small input (64 voxels per sample), which loads the code and starts the thread pools: resident
memory that does not grow with the input, counted against neither tool. Each MONAI row runs in a fresh process, as does each segloss row.

The table, one row per (shape, loss), every row:
  MONAI ms, segloss ms   median over the runs of each run's median
  speed-up               MONAI ms / segloss ms (the ratio of the medians)
  speed-up range         the lowest and highest single-run ratio
  floor ms               median over the runs of the floor: the logits and the target read twice
                         and a gradient-sized buffer written once, vectorised, on T threads
                         (loss_bench's module docs say how); segloss/floor its ratio
  MONAI +MiB, segloss +MiB  the largest peak extra memory over the runs; grad MiB the gradient's
The summary under the table counts the rows under 3x (medians and single runs) and the rows where
segloss's extra memory exceeds the gradient + 10%.

MONAI's timed step is `x = logits.detach().requires_grad_(True); loss(x, target).backward()`:
no copy of the logits. Every loss is configured identically in both tools (LOSSES below). MONAI
1.6.1's DiceFocalLoss and GeneralizedDiceFocalLoss have no softmax focal option (their focal term
is always the sigmoid one); for `dice-focal` and `gdl-focal` MONAI's class is built as usual and
its `focal` member replaced by `FocalLoss(use_softmax=True)` with the same other options, so the
forward is MONAI's own (one one-hot, both terms). `ce` is torch.nn.CrossEntropyLoss on the logits
and the integer labels `[B, spatial]`, as DiceCELoss calls it (the conversion to integers is done
once, outside the timed step). The clDice and distance-transform losses take the logits with
their spatial shape in both tools (MONAI's distance maps come from scipy, segloss's from its own
exact transform). `unified-focal` runs on the two-class shapes only (MONAI's
AsymmetricUnifiedFocalLoss takes two classes of probabilities): both tools get the softmax of the
logits, taken before the timed step.

usage: python3 bench/compare_monai.py [--iters N] [--runs R] [--threads T] [--shapes NAME,...]
                                     [--losses NAME,...] [--markdown]
                                     [--device cpu|cuda] [--segloss-device D] [--bench PATH]
  --markdown  print only the README's table: a caption line (the command line, the date, the
              machine, versions, threads), the table, the summary, the loss configurations
needs: pip install torch monai; a release build of the example
       (cargo build --release -p segloss --example loss_bench)

On a GPU (`--device cuda`): MONAI runs on PyTorch's CUDA device and segloss on `--segloss-device`
(`cuda`, or `wgpu-gpu` for Vulkan; the example built with that feature, `--bench` naming it);
each step of both ends with reading back the sum of the gradient, two untimed steps come first,
and the memory column is PyTorch's peak allocated GPU memory beyond the inputs (segloss's and
the floor are host measurements and read n/a).
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

SHAPES = {
    "question_3x9x64^3": (3, 9, (64, 64, 64)),
    "2x4x128^3": (2, 4, (128, 128, 128)),
    "1x14x96^3": (1, 14, (96, 96, 96)),
    "2d_16x4x512^2": (16, 4, (512, 512)),
    "binary_2x2x128^3": (2, 2, (128, 128, 128)),
}
# MONAI's AsymmetricUnifiedFocalLoss takes two classes only: it runs on the two-class shapes.
TWO_CLASS_ONLY = {"unified-focal"}
# name: (segloss configuration, MONAI configuration). Options not named keep their defaults, which
# are the same in both. Targets: a label map with labels uniform in 0..C-1 (MONAI: float [B, 1,
# spatial]), except sigmoid-dice (a dense multi-label [B, C, spatial], each entry 1 with
# probability 0.3). Must match loss_bench's LOSSES.
LOSSES = {
    "dice": ("DiceLoss(Softmax, include_background false)",
             "DiceLoss(softmax=True, to_onehot_y=True, include_background=False)"),
    "sigmoid-dice": ("DiceLoss(Sigmoid), dense multi-label target",
                     "DiceLoss(sigmoid=True), dense multi-label target"),
    "gdl": ("GeneralizedDiceLoss(Softmax)",
            "GeneralizedDiceLoss(softmax=True, to_onehot_y=True)"),
    "tversky": ("TverskyLoss(Softmax, include_background false, alpha 0.3, beta 0.7)",
                "TverskyLoss(softmax=True, to_onehot_y=True, include_background=False, alpha=0.3, beta=0.7)"),
    "mcc": ("MccLoss(Softmax, include_background false)",
            "MCCLoss(softmax=True, to_onehot_y=True, include_background=False)"),
    "dice-ce": ("DiceCELoss(Softmax, include_background false)",
                "DiceCELoss(softmax=True, to_onehot_y=True, include_background=False)"),
    "dice-focal": ("DiceFocalLoss(Softmax, include_background false, focal_use_softmax)",
                   "DiceFocalLoss(softmax=True, to_onehot_y=True, include_background=False), "
                   "focal = FocalLoss(include_background=False, use_softmax=True)"),
    "gdl-focal": ("GeneralizedDiceFocalLoss(Softmax, focal_use_softmax)",
                  "GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True), "
                  "focal = FocalLoss(to_onehot_y=True, use_softmax=True)"),
    "focal": ("FocalLoss(use_softmax)",
              "FocalLoss(to_onehot_y=True, use_softmax=True)"),
    "ce": ("CrossEntropyLoss",
           "torch.nn.CrossEntropyLoss on integer labels [B, spatial]"),
    "wasserstein": ("GeneralizedWassersteinDiceLoss(distance |i - j| / (C - 1))",
                    "GeneralizedWassersteinDiceLoss(dist_matrix |i - j| / (C - 1))"),
    "cldice": ("SoftclDiceLoss(Softmax, include_background false, iterations 3)",
               "SoftclDiceLoss(softmax=True, to_onehot_y=True, include_background=False, iter_=3)"),
    "dice-cldice": ("SoftDiceclDiceLoss(Softmax, include_background false, iterations 3, alpha 0.5)",
                    "SoftDiceclDiceLoss(softmax=True, to_onehot_y=True, include_background=False, iter_=3, alpha=0.5)"),
    "hausdorff": ("HausdorffDTLoss(Softmax, include_background false, alpha 2)",
                  "HausdorffDTLoss(softmax=True, to_onehot_y=True, include_background=False, alpha=2)"),
    "log-hausdorff": ("LogHausdorffDTLoss(Softmax, include_background false, alpha 2)",
                      "LogHausdorffDTLoss(softmax=True, to_onehot_y=True, include_background=False, alpha=2)"),
    "boundary": ("BoundaryLoss(Softmax, include_background false)",
                 "BoundaryLoss(softmax=True, to_onehot_y=True, include_background=False)"),
    "unified-focal": ("AsymmetricUnifiedFocalLoss(None) on probabilities (softmax taken before the timed step)",
                      "AsymmetricUnifiedFocalLoss(to_onehot_y=True) on the same probabilities"),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "examples", "loss_bench")
HEADER = ("shape", "loss", "MONAI ms", "segloss ms", "speed-up", "speed-up range", "floor ms",
          "segloss/floor", "MONAI +MiB", "segloss +MiB", "grad MiB")


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def monai_loss(loss_name, c):
    """MONAI's loss for `loss_name` (see LOSSES) and the target it takes: "labels" (float
    [B, 1, spatial]), "int_labels" (int64 [B, spatial]) or "multi" (dense [B, C, spatial])."""
    import torch
    from monai.losses import (DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, GeneralizedDiceFocalLoss,
                              GeneralizedDiceLoss, GeneralizedWassersteinDiceLoss, TverskyLoss)

    if loss_name == "dice":
        return DiceLoss(softmax=True, to_onehot_y=True, include_background=False), "labels"
    if loss_name == "sigmoid-dice":
        return DiceLoss(sigmoid=True), "multi"
    if loss_name == "gdl":
        return GeneralizedDiceLoss(softmax=True, to_onehot_y=True), "labels"
    if loss_name == "tversky":
        return TverskyLoss(softmax=True, to_onehot_y=True, include_background=False, alpha=0.3, beta=0.7), "labels"
    if loss_name == "mcc":
        from monai.losses import MCCLoss
        return MCCLoss(softmax=True, to_onehot_y=True, include_background=False), "labels"
    if loss_name == "dice-ce":
        return DiceCELoss(softmax=True, to_onehot_y=True, include_background=False), "labels"
    if loss_name == "dice-focal":
        loss = DiceFocalLoss(softmax=True, to_onehot_y=True, include_background=False)
        # MONAI 1.6.1 builds FocalLoss(include_background, to_onehot_y=False, gamma, weight, alpha,
        # reduction) here; the same with use_softmax=True.
        loss.focal = FocalLoss(include_background=False, to_onehot_y=False, gamma=2.0, use_softmax=True)
        return loss, "labels"
    if loss_name == "gdl-focal":
        loss = GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True)
        # MONAI 1.6.1: FocalLoss(include_background, to_onehot_y, gamma, weight, reduction).
        loss.focal = FocalLoss(include_background=True, to_onehot_y=True, gamma=2.0, use_softmax=True)
        return loss, "labels"
    if loss_name == "focal":
        return FocalLoss(to_onehot_y=True, use_softmax=True), "labels"
    if loss_name == "ce":
        return torch.nn.CrossEntropyLoss(), "int_labels"
    if loss_name == "wasserstein":
        dist = [[abs(i - j) / (c - 1) for j in range(c)] for i in range(c)]
        return GeneralizedWassersteinDiceLoss(dist_matrix=torch.tensor(dist)), "labels"
    if loss_name in ("cldice", "dice-cldice", "hausdorff", "log-hausdorff", "boundary"):
        from monai.losses import (BoundaryLoss, HausdorffDTLoss, LogHausdorffDTLoss, SoftclDiceLoss,
                                  SoftDiceclDiceLoss)
        common = dict(softmax=True, to_onehot_y=True, include_background=False)
        return {
            "cldice": lambda: SoftclDiceLoss(iter_=3, **common),
            "dice-cldice": lambda: SoftDiceclDiceLoss(iter_=3, alpha=0.5, **common),
            "hausdorff": lambda: HausdorffDTLoss(alpha=2.0, **common),
            "log-hausdorff": lambda: LogHausdorffDTLoss(alpha=2.0, **common),
            "boundary": lambda: BoundaryLoss(**common),
        }[loss_name](), "labels"
    if loss_name == "unified-focal":
        from monai.losses import AsymmetricUnifiedFocalLoss
        return AsymmetricUnifiedFocalLoss(to_onehot_y=True, num_classes=2), "probs"
    raise ValueError(loss_name)


def monai_row(loss_name, shape, iters, device="cpu"):
    import torch

    b, c, spatial = shape
    g = torch.Generator().manual_seed(1)
    loss, kind = monai_loss(loss_name, c)

    def inputs(spatial):
        logits = torch.randn((b, c) + spatial, generator=g, dtype=torch.float32).to(device)
        if kind == "probs":
            logits = torch.softmax(logits, dim=1)
        labels = torch.randint(0, c, (b, 1) + spatial, generator=g)
        if kind in ("labels", "probs"):
            target = labels.float().to(device)
        elif kind == "int_labels":
            target = labels.squeeze(1).long().to(device)
        else:
            target = (torch.rand((b, c) + spatial, generator=g) < 0.3).float().to(device)
        return logits, target

    # One step on a small input (64 voxels per sample) first, as loss_bench does: it loads the
    # code the step runs and starts the thread pool, resident memory that does not grow with the
    # input and is not counted against either tool.
    small_logits, small_target = inputs(tuple([4] * len(spatial)) if len(spatial) == 3 else (8, 8))
    x = small_logits.detach().requires_grad_(True)
    loss(x, small_target).backward()
    del x, small_logits, small_target
    logits, target = inputs(spatial)

    def step():
        x = logits.detach().requires_grad_(True)
        value = loss(x, target)
        value.backward()
        if device != "cpu":
            # Waits for the step's kernels, as segloss's GPU steps do.
            return x.grad.sum().item()
        return x.grad

    # Memory of the first measured step beyond the inputs: PyTorch's peak allocated GPU memory
    # (after two untimed steps), or the OS's peak resident memory on the CPU.
    if device != "cpu":
        step()
        step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        extra = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        reset_peak()
        before = status_kib("VmRSS:")
        step()
        extra = (status_kib("VmHWM:") - before) / 1024.0
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), extra


def run_json(cmd, env=None):
    """Runs `cmd` and returns its last output line as JSON, or an error string."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-3:]
        return f"exit {out.returncode}: " + " / ".join(tail)
    return json.loads(out.stdout.strip().splitlines()[-1])


def monai_subprocess(name, loss_name, iters, threads, device):
    """One MONAI row in a fresh process, so that its memory reading is not hidden by memory the
    PyTorch allocator kept from an earlier row."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return run_json([sys.executable, os.path.abspath(__file__), "--one-monai", name, loss_name,
                     "--iters", str(iters), "--threads", str(threads), "--device", device], env)


def segloss_subprocess(loss_name, shape, iters, threads, bench, device):
    b, c, spatial = shape
    dims = "x".join(str(v) for v in (b, c) + spatial)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    return run_json([bench, loss_name, dims, "--iters", str(iters), "--device", device], env)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_row(name, loss_name, runs):
    """One table row from the per-run results [(monai, segloss), ...] of one (shape, loss)."""
    ok = [(m, s) for m, s in runs if isinstance(m, dict) and isinstance(s, dict)]
    if not ok:
        return (name, loss_name) + ("failed",) * (len(HEADER) - 2)
    m_ms = statistics.median(m["median_ms"] for m, _ in ok)
    s_ms = statistics.median(s["median_ms"] for _, s in ok)
    ratios = [m["median_ms"] / s["median_ms"] for m, s in ok]
    host = ok[0][1]["floor_ms"] is not None
    floor = statistics.median(s["floor_ms"] for _, s in ok) if host else None
    failed = len(runs) - len(ok)
    return (name, loss_name, f"{m_ms:.1f}", f"{s_ms:.1f}", f"{m_ms / s_ms:.2f}x",
            f"{min(ratios):.2f}x-{max(ratios):.2f}x" + (f" ({failed} failed)" if failed else ""),
            f"{floor:.1f}" if host else "n/a", f"{s_ms / floor:.2f}x" if host else "n/a",
            f"{max(m['peak_extra_mib'] for m, _ in ok):.0f}",
            f"{max(s['peak_extra_mib'] for _, s in ok):.0f}" if host else "n/a",
            f"{ok[0][1]['gradient_mib']:.0f}")


def summary(results):
    """Counts against the targets: 3x on the medians and in single runs, memory within the
    gradient + 10%."""
    rows = slow_rows = single = slow_single = heavy = failed = 0
    for runs in results.values():
        ok = [(m, s) for m, s in runs if isinstance(m, dict) and isinstance(s, dict)]
        failed += len(runs) - len(ok)
        if not ok:
            continue
        rows += 1
        m_ms = statistics.median(m["median_ms"] for m, _ in ok)
        s_ms = statistics.median(s["median_ms"] for _, s in ok)
        slow_rows += m_ms / s_ms < 3.0
        for m, s in ok:
            single += 1
            slow_single += m["median_ms"] / s["median_ms"] < 3.0
        if ok[0][1]["peak_extra_mib"] is not None:
            heavy += max(s["peak_extra_mib"] for _, s in ok) > 1.1 * ok[0][1]["gradient_mib"]
    return (f"Rows under 3x on the medians: {slow_rows} of {rows}; single-run ratios under 3x: "
            f"{slow_single} of {single}; rows where segloss's peak extra memory exceeds the gradient + 10%: "
            f"{heavy} of {rows}." + (f" Failed (row, run) pairs, left out of these counts: {failed}." if failed else ""))


def main():
    ap = argparse.ArgumentParser(description="MONAI against segloss, forward + backward of every loss")
    ap.add_argument("--iters", type=int, default=5, help="timed steps per row and run (median taken)")
    ap.add_argument("--runs", type=int, default=1, help="repetitions of the whole comparison")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--losses", default=",".join(LOSSES), help=f"of {', '.join(LOSSES)}")
    ap.add_argument("--markdown", action="store_true", help="print only the README's table (caption, table, summary, configurations)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="MONAI's device")
    ap.add_argument("--segloss-device", default=None, help="loss_bench's --device (default: flex on cpu, cuda on cuda)")
    ap.add_argument("--bench", default=BENCH, help="the loss_bench binary")
    ap.add_argument("--one-monai", nargs=2, metavar=("SHAPE", "LOSS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.iters < 1 or a.runs < 1 or a.threads < 1:
        sys.exit("--iters, --runs and --threads must be at least 1")
    if a.one_monai:
        import torch
        torch.set_num_threads(a.threads)
        ms, mib = monai_row(a.one_monai[1], SHAPES[a.one_monai[0]], a.iters, a.device)
        print(json.dumps({"median_ms": ms, "peak_extra_mib": mib, "threads": torch.get_num_threads()}))
        return
    losses = a.losses.split(",")
    shapes = a.shapes.split(",")
    for loss_name in losses:
        if loss_name not in LOSSES:
            sys.exit(f"unknown loss {loss_name!r}: one of {', '.join(LOSSES)}")
    for name in shapes:
        if name not in SHAPES:
            sys.exit(f"unknown shape {name!r}: one of {', '.join(SHAPES)}")
    if not os.path.exists(a.bench):
        sys.exit(f"missing {a.bench}: run `cargo build --release -p segloss --example loss_bench` first")
    seg_device = a.segloss_device or ("flex" if a.device == "cpu" else "cuda")
    import torch
    import monai

    command = " ".join(["python3", os.path.relpath(os.path.abspath(__file__), os.getcwd())] + [shlex.quote(v) for v in sys.argv[1:]])
    started = datetime.datetime.now()
    say = (lambda *v: print(*v, file=sys.stderr, flush=True)) if a.markdown else (lambda *v: print(*v, flush=True))
    if a.device == "cpu":
        where = f"{cpu_name()}, {os.cpu_count()} CPUs"
        memory = "peak resident memory added by the first full-size step (VmHWM), after one step on a 64-voxel input in both tools"
    else:
        where = f"{torch.cuda.get_device_name()}, segloss on {seg_device}"
        memory = "MONAI: PyTorch's peak allocated GPU memory beyond the inputs; segloss and the floor: n/a (host measurements)"
    say(f"{command}: MONAI {monai.__version__}, PyTorch {torch.__version__}, {where}; {a.threads} threads for both, f32; "
        f"{a.runs} run(s) of the median of {a.iters} forward + backward")

    # results[(shape, loss)] = [(monai, segloss) per run]; each a dict or an error string.
    results = {(name, loss_name): [] for name in shapes for loss_name in losses
               if loss_name not in TWO_CLASS_ONLY or SHAPES[name][1] == 2}
    failures = []
    for run in range(a.runs):
        for name, loss_name in results:
            m = monai_subprocess(name, loss_name, a.iters, a.threads, a.device)
            s = segloss_subprocess(loss_name, SHAPES[name], a.iters, a.threads, a.bench, seg_device)
            results[(name, loss_name)].append((m, s))
            for who, r in (("MONAI", m), ("segloss", s)):
                if isinstance(r, str):
                    failures.append(f"run {run + 1}, {name}, {loss_name}, {who}: {r}")
            if isinstance(m, dict) and isinstance(s, dict):
                if s.get("floor_threads") not in (None, a.threads) or m.get("threads") != a.threads:
                    failures.append(f"run {run + 1}, {name}, {loss_name}: threads MONAI {m.get('threads')}, "
                                    f"segloss floor {s.get('floor_threads')}, asked {a.threads}")
                floor = f"{s['floor_ms']:.1f} ms ({s['floor_gb_s']:.1f} GB/s)" if s["floor_ms"] is not None else "n/a"
                say(f"  run {run + 1}/{a.runs}  {name}  {loss_name}: MONAI {m['median_ms']:.1f} ms, "
                    f"segloss {s['median_ms']:.1f} ms, {m['median_ms'] / s['median_ms']:.2f}x; floor {floor}")
            else:
                say(f"  run {run + 1}/{a.runs}  {name}  {loss_name}: failed")

    rows = [table_row(name, loss_name, runs) for (name, loss_name), runs in results.items()]
    gb_s = [s["floor_gb_s"] for runs in results.values() for _, s in runs
            if isinstance(s, dict) and s.get("floor_gb_s") is not None]
    floor_text = (f"the floor (logits and target read twice, gradient written once; vectorised, {a.threads} threads) "
                  f"ran at a median {statistics.median(gb_s):.1f} GB/s" if gb_s else "no floor measured (segloss not on the host, or every row failed)")
    caption = (f"`{command}`, {started:%Y-%m-%d %H:%M}, {where}: MONAI {monai.__version__} (PyTorch {torch.__version__}) "
               f"against segloss ({seg_device}), {a.threads} threads for both, f32. Each time is the median over "
               f"{a.runs} run(s) of the run's median of {a.iters} forward + backward after "
               f"{'one untimed step' if a.device == 'cpu' else 'two untimed steps'}; \"speed-up\" is the ratio of "
               f"those medians, \"speed-up range\" the lowest and highest single-run ratio; {floor_text}; "
               f"+MiB: {memory}, the largest over the runs.")
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    legend = ["Configurations (segloss / MONAI; other options at their defaults, the same in both):"]
    legend += [f"- {n}: {LOSSES[n][0]} / {LOSSES[n][1]}" for n in losses]
    if a.markdown:
        print("\n".join([caption, ""] + table + ["", summary(results), ""] + legend))
    else:
        widths = [max(len(HEADER[i]), *(len(r[i]) for r in rows)) for i in range(len(HEADER))]
        print()
        print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths)))
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        print()
        print(summary(results))
        print(floor_text[0].upper() + floor_text[1:] + ".")
    if failures:
        print("\nfailed:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
