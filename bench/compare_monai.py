#!/usr/bin/env python3
"""Side by side: MONAI (PyTorch, CPU) and segloss, forward + backward of Dice-family losses.

Same machine, same run, same thread count. For every named shape and loss it prints the median
time of one forward + backward (gradient with respect to the logits) for MONAI and for segloss
(fused kernel), their ratio, the memory-traffic floor measured in the same run (segloss's
`loss_bench` reads the logits and the target twice and writes a gradient-sized buffer once with plain
copies and sums) and the peak resident memory that the first forward + backward adds beyond the
inputs, read from the OS (Linux VmHWM, reset just before through /proc/self/clear_refs).

usage: python3 bench/compare_monai.py [--iters N] [--threads T] [--shapes NAME,...]
                                     [--losses dice,sigmoid-dice,gdl,wasserstein]
                                     [--device cpu|cuda] [--segloss-device D] [--bench PATH]
needs: pip install torch monai; a release build of the example
       (cargo build --release --example loss_bench)

On a GPU (`--device cuda`): MONAI runs on PyTorch's CUDA device and segloss on `--segloss-device`
(`cuda`, or `wgpu-gpu` for Vulkan; the example built with that feature, `--bench` naming it);
each step of both ends with reading back the sum of the gradient, two untimed steps come first,
and the memory column is PyTorch's peak allocated GPU memory beyond the inputs (segloss's and
the floor are host measurements and read n/a).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {
    "question_3x9x64^3": (3, 9, (64, 64, 64)),
    "2x4x128^3": (2, 4, (128, 128, 128)),
    "1x14x96^3": (1, 14, (96, 96, 96)),
    "2d_16x4x512^2": (16, 4, (512, 512)),
}
LOSSES = ["dice", "sigmoid-dice", "gdl"]
# Not in the default table: the Generalized Wasserstein Dice, which segloss runs on Burn tensor
# operations (no fused kernel); distance |i - j| / (C - 1) in both tools.
EXTRA_LOSSES = ["wasserstein"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "examples", "loss_bench")


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


def monai_row(loss_name, shape, iters, device="cpu"):
    import torch
    from monai.losses import DiceLoss, GeneralizedDiceLoss, GeneralizedWassersteinDiceLoss

    b, c, spatial = shape
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((b, c) + spatial, generator=g).to(device)
    labels = torch.randint(0, c, (b, 1) + spatial, generator=g).float().to(device)
    if loss_name == "dice":
        loss = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
        target = labels
    elif loss_name == "sigmoid-dice":
        loss = DiceLoss(sigmoid=True)
        target = (torch.rand((b, c) + spatial, generator=g) < 0.3).float().to(device)
    elif loss_name == "gdl":
        loss = GeneralizedDiceLoss(softmax=True, to_onehot_y=True)
        target = labels
    else:
        dist = [[abs(i - j) / (c - 1) for j in range(c)] for i in range(c)]
        loss = GeneralizedWassersteinDiceLoss(dist_matrix=torch.tensor(dist))
        target = labels

    def step():
        x = logits.clone().requires_grad_(True)
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


def monai_subprocess(name, loss_name, iters, threads, device):
    """One MONAI row in a fresh process, so that its memory reading is not hidden by memory the
    PyTorch allocator kept from an earlier row."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one-monai", name, loss_name,
                          "--iters", str(iters), "--threads", str(threads), "--device", device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def segloss_row(loss_name, shape, iters, threads, bench, device):
    b, c, spatial = shape
    dims = "x".join(str(v) for v in (b, c) + spatial)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([bench, loss_name, dims, "--iters", str(iters), "--device", device],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--losses", default=",".join(LOSSES), help=f"of {', '.join(LOSSES + EXTRA_LOSSES)}")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="MONAI's device")
    ap.add_argument("--segloss-device", default=None, help="loss_bench's --device (default: flex on cpu, cuda on cuda)")
    ap.add_argument("--bench", default=BENCH, help="the loss_bench binary")
    ap.add_argument("--one-monai", nargs=2, metavar=("SHAPE", "LOSS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one_monai:
        import torch
        torch.set_num_threads(a.threads)
        ms, mib = monai_row(a.one_monai[1], SHAPES[a.one_monai[0]], a.iters, a.device)
        print(json.dumps({"median_ms": ms, "peak_extra_mib": mib}))
        return
    losses = a.losses.split(",")
    for loss_name in losses:
        if loss_name not in LOSSES + EXTRA_LOSSES:
            sys.exit(f"unknown loss {loss_name!r}: one of {', '.join(LOSSES + EXTRA_LOSSES)}")
    for name in a.shapes.split(","):
        if name not in SHAPES:
            sys.exit(f"unknown shape {name!r}: one of {', '.join(SHAPES)}")
    if not os.path.exists(a.bench):
        sys.exit(f"missing {a.bench}: run `cargo build --release --example loss_bench` first")
    seg_device = a.segloss_device or ("flex" if a.device == "cpu" else "cuda")
    import torch
    import monai

    torch.set_num_threads(a.threads)
    if a.device == "cpu":
        print(f"MONAI {monai.__version__}, PyTorch {torch.__version__}, {a.threads} threads for both, "
              f"median of {a.iters} forward + backward after one warm-up; memory: peak RSS added by the first one")
    else:
        print(f"MONAI {monai.__version__}, PyTorch {torch.__version__} on {torch.cuda.get_device_name()}, "
              f"segloss on {seg_device}; median of {a.iters} forward + backward after two warm-ups; "
              f"memory: PyTorch's peak allocated GPU memory beyond the inputs")
    header = ("shape", "loss", "MONAI ms", "segloss ms", "speed-up", "floor ms", "segloss/floor",
              "MONAI +MiB", "segloss +MiB", "grad MiB")
    rows = []
    for name in a.shapes.split(","):
        for loss_name in losses:
            m = monai_subprocess(name, loss_name, a.iters, a.threads, a.device)
            m_ms, m_mib = m["median_ms"], m["peak_extra_mib"]
            s = segloss_row(loss_name, SHAPES[name], a.iters, a.threads, a.bench, seg_device)
            host = s["floor_ms"] is not None
            rows.append((name, loss_name, f"{m_ms:.1f}", f"{s['median_ms']:.1f}", f"{m_ms / s['median_ms']:.2f}x",
                         f"{s['floor_ms']:.1f}" if host else "n/a",
                         f"{s['median_ms'] / s['floor_ms']:.2f}x" if host else "n/a",
                         f"{m_mib:.0f}", f"{s['peak_extra_mib']:.0f}" if host else "n/a", f"{s['gradient_mib']:.0f}"))
            print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
