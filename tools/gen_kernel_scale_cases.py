#!/usr/bin/env python3
"""MONAI 1.6.1 reference cases at the scale of the fused CPU kernel's work units.

The cases of crates/segloss/tests/fixtures/monai/ have at most 180 voxels per sample, so the
kernel's tiles (256 voxels), blocks (1024 voxels), runs (4 blocks = 4096 voxels, sigmoid and no
activation) and its split of a batch into several tasks never meet MONAI there. These cases have
more than 4096 voxels per sample (a sigmoid sample spans two runs, a softmax sample five or more
blocks, the last tile partial), batch 2, spatial sizes that are not multiples of 8, 256 or 1024,
logits with saturating entries (+-30), label maps with a class absent from one sample and, in
some cases, an ignore index on about 5% of the voxels.

Same format as the shared reference cases (one file per loss, `loss` = MONAI class name,
`options` = MONAI constructor keyword arguments, `input`, `target`, `mask` for MaskedDiceLoss,
`expected`, `grad_input` = d sum(expected) / d input), computed by MONAI on PyTorch in float64
from inputs exactly representable in float32. To keep the files small (under 10 MB in all):
logits are drawn with 3 decimals, probabilities with 4 and soft labels with 3, then rounded
through float32, and written (with targets and masks) as the shortest decimal that rounds back to
the same float32; `expected` is the shortest decimal of the float64 value and `grad_input` the
float64 value rounded to GRAD_DIGITS significant digits. Each file is gzipped
(`<loss>.json.gz`, the same bytes on every run). The provenance and a table of the cases are in
crates/segloss/tests/fixtures/monai_kernel/README.md.

usage: gen_kernel_scale_cases.py [OUT_DIR] [--seed N]   (needs pip install torch monai==1.6.1)
"""
import argparse
import gzip
import json
import math
import os

import numpy as np
import torch
import monai
from monai import losses as L
from monai.networks.utils import one_hot

torch.set_default_dtype(torch.float64)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "segloss", "tests",
                           "fixtures", "monai_kernel")

# Spatial shapes: more than 4096 voxels per sample, no size a multiple of 8.
S3 = [17, 19, 13]      # 4199 voxels: 5 blocks (last one partial), last tile 103 voxels, 2 runs
S3B = [11, 29, 13]     # 4147 voxels: last tile 51 voxels, the second run 51 voxels
S2 = [67, 65]          # 4355 voxels (2D): last tile 3 voxels
S3L = [23, 21, 19]     # 9177 voxels: 3 runs, 9 blocks

# Significant digits of the gradients: the files' bulk. 9 digits hold a float32 exactly and put a
# relative rounding error of at most 5e-9 on the reference, 2e4 times below the tolerance (1e-4).
GRAD_DIGITS = 9


# ------------------------------------------------------------------ helpers from gen_reference.py

def f32(t):
    """Rounds to float32 and back, so that a float32 implementation sees exactly these values."""
    return t.to(torch.float32).to(torch.float64)


def finite_json(v):
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def tensor_json(t, digits=None):
    """A float64 result: shape and row-major data, each value the shortest float64 decimal, or
    that of the value rounded to `digits` significant digits."""
    t = torch.as_tensor(t).detach().to(torch.float64)
    data = t.reshape(-1).tolist()
    if digits is not None:
        data = [float(f"{v:.{digits}g}") for v in data]
    return {"shape": list(t.shape), "data": [finite_json(v) for v in data]}


def tensor_json_f32(t):
    """An input exactly representable in float32: the shortest decimal that rounds to it."""
    t = torch.as_tensor(t).detach()
    a = t.to(torch.float32).numpy().reshape(-1)
    assert np.array_equal(a.astype(np.float64), t.to(torch.float64).numpy().reshape(-1)), "not a float32 value"
    data = []
    for v in a:
        if np.isnan(v) or np.isinf(v):
            data.append(finite_json(float(v)))
        elif v == np.round(v) and abs(v) < 2 ** 24:
            data.append(float(v))
        else:
            d = float(str(v))  # numpy prints a float32 as the shortest decimal that rounds to it
            assert np.float32(d) == v
            data.append(d)
    return {"shape": list(t.shape), "data": data}


def run_loss(loss, x, y, *extra):
    x = x.clone().requires_grad_(True)
    out = loss(x, y, *extra)
    out.sum().backward()
    return out.detach(), x.grad.detach()


def loss_case(name, cls, opts, x, y, mask=None, ctor_extra=None, what=""):
    kwargs = dict(opts)
    if ctor_extra:
        kwargs.update(ctor_extra)
    loss = cls(**kwargs)
    extra = (mask,) if mask is not None else ()
    out, grad = run_loss(loss, x, y, *extra)
    options = dict(opts)
    if ctor_extra:
        options.update({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in ctor_extra.items()})
    # `what` (activation, target kind, shape) is printed, not stored: the project's harness fails a
    # case on any field it does not know.
    print(f"  {name}: {what}")
    case = {"name": name, "options": options, "input": tensor_json_f32(x), "target": tensor_json_f32(y)}
    if mask is not None:
        case["mask"] = tensor_json_f32(mask)
    case["expected"] = tensor_json(out)
    case["grad_input"] = tensor_json(grad, digits=GRAD_DIGITS)
    return case


# ------------------------------------------------------------------ inputs

class Gen:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def logits(self, b, c, spatial, std=2.0, saturate=0.004):
        """Normal logits (std 2) with a few entries of +-30 that saturate the activation."""
        x = self.rng.normal(0, std, size=[b, c] + spatial)
        sat = self.rng.random(size=x.shape) < saturate
        x[sat] = self.rng.choice([-30.0, 30.0], size=int(sat.sum()))
        return f32(torch.from_numpy(np.round(x, 3)))

    def probs(self, b, c, spatial):
        """Probabilities in [0, 1] (no activation), with some exact 0s and 1s."""
        p = self.rng.uniform(0, 1, size=[b, c] + spatial)
        r = self.rng.random(size=p.shape)
        p[r < 0.01] = 0.0
        p[r > 0.99] = 1.0
        return f32(torch.from_numpy(np.round(p, 4)))

    def labels(self, b, c, spatial, absent=True):
        """Imbalanced label map (B, 1, ...) in [0, c); with `absent`, one foreground class is
        missing from the last sample (the last class)."""
        p = self.rng.dirichlet(np.ones(c) * 2.0)
        p = 0.7 * p + 0.3 / c  # every class at least 30% / c of the voxels
        out = []
        for i in range(b):
            q = p.copy()
            if absent and i == b - 1:
                q[c - 1] = 0.0
                q = q / q.sum()
            out.append(self.rng.choice(c, size=[1] + spatial, p=q))
        return torch.from_numpy(np.stack(out).astype(np.float64))

    def ignore(self, y, sentinel=255, frac=0.05):
        y = y.clone()
        y[torch.from_numpy(self.rng.random(size=y.shape) < frac)] = sentinel
        return y

    def onehot(self, b, c, spatial, absent=True):
        return one_hot(self.labels(b, c, spatial, absent), num_classes=c)

    def multilabel(self, b, c, spatial, empty=True):
        """Binary multi-label target (B, C, ...): channels overlap; with `empty`, one channel is
        empty in the last sample."""
        dens = self.rng.uniform(0.1, 0.6, size=c)
        t = self.rng.random(size=[b, c] + spatial) < dens.reshape([1, c] + [1] * len(spatial))
        if empty:
            t[b - 1, int(self.rng.integers(0, c))] = False
        return torch.from_numpy(t.astype(np.float64))

    def soft(self, b, c, spatial):
        return f32(torch.from_numpy(np.round(self.rng.uniform(0, 1, size=[b, c] + spatial), 3)))

    def mask(self, b, spatial, fractional=False):
        r = self.rng.random(size=[b, 1] + spatial)
        m = (r < 0.7).astype(np.float64)
        if fractional:
            m = np.where(r < 0.2, 0.25, np.where(r < 0.4, 0.5, m))
        return torch.from_numpy(m)

    def weights(self, n):
        return [round(float(w), 3) for w in self.rng.uniform(0.2, 2.0, size=n)]


def make(g, act, target, b, c, spatial, ignore=False):
    """Input and target for an activation ("softmax" / "sigmoid" / "none") and a target kind
    ("labels" / "onehot" / "multilabel" / "soft"); returns (options, x, y). With three classes or
    more, one foreground class is absent from the last sample; with two or more channels, one
    multi-label channel is empty in the last sample."""
    absent = c > 2
    opts = {}
    if act == "softmax":
        opts["softmax"] = True
    elif act == "sigmoid":
        opts["sigmoid"] = True
    x = g.probs(b, c, spatial) if act == "none" else g.logits(b, c, spatial)
    if target == "labels":
        opts["to_onehot_y"] = True
        y = g.labels(b, c, spatial, absent)
        if ignore:
            y = g.ignore(y)
            opts["ignore_index"] = 255
    elif target == "onehot":
        y = g.onehot(b, c, spatial, absent)
    elif target == "multilabel":
        y = g.multilabel(b, c, spatial, empty=c > 1)
    elif target == "soft":
        y = g.soft(b, c, spatial)
        opts["soft_label"] = True
    else:
        raise ValueError(target)
    return opts, x, y


def shape_name(b, c, spatial):
    return "x".join(str(s) for s in [b, c] + spatial)


# ------------------------------------------------------------------ cases per loss

def dice_cases(g):
    # (activation, target, C, spatial, extra options, ignore)
    specs = [
        ("softmax", "labels", 3, S3, {}, False),
        ("softmax", "labels", 4, S3, {"include_background": False, "batch": True}, True),
        ("softmax", "labels", 3, S3B, {"squared_pred": True, "jaccard": True, "reduction": "none"}, False),
        ("softmax", "labels", 3, S2, {"include_background": False, "reduction": "sum", "weight": "w"}, False),
        ("softmax", "labels", 3, S3, {"smooth_nr": 0.0, "smooth_dr": 1e-6, "reduction": "none"}, False),
        ("softmax", "onehot", 3, S3, {"batch": True, "weight": "w"}, False),
        ("softmax", "soft", 3, S3B, {"squared_pred": True, "reduction": "sum"}, False),
        ("sigmoid", "multilabel", 3, S3, {}, False),
        ("sigmoid", "multilabel", 2, S3B, {"include_background": False, "batch": True, "squared_pred": True,
                                           "reduction": "sum"}, False),
        ("sigmoid", "multilabel", 1, S3, {}, False),
        ("sigmoid", "labels", 3, S3, {"include_background": False, "reduction": "none"}, True),
        ("sigmoid", "soft", 2, S3, {"batch": True, "jaccard": True, "reduction": "none"}, False),
        ("sigmoid", "labels", 2, S3L, {"weight": "w"}, False),
        ("none", "onehot", 3, S3, {"jaccard": True}, False),
        ("none", "labels", 3, S2, {"smooth_nr": 1.0, "smooth_dr": 1.0, "reduction": "sum"}, True),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra, ign) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp, ignore=ign)
        extra = dict(extra)
        if extra.get("weight") == "w":
            extra["weight"] = g.weights(c if extra.get("include_background", True) else c - 1)
        opts.update(extra)
        what = f"{act}, {tgt}, {shape_name(b, c, sp)}"
        cases.append(loss_case(f"kernel_dice_{i}", L.DiceLoss, opts, x, y, what=what))
    return cases


def masked_dice_cases(g):
    specs = [
        ("softmax", "labels", 3, S3, {"include_background": False}, False),
        ("softmax", "onehot", 3, S3B, {"reduction": "sum", "squared_pred": True}, True),
        ("sigmoid", "multilabel", 2, S3, {"batch": True, "reduction": "none"}, False),
        ("sigmoid", "multilabel", 1, S2, {}, True),
        ("none", "onehot", 2, S3, {"include_background": False, "jaccard": True}, False),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra, frac) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp)
        opts.update(extra)
        m = g.mask(b, sp, fractional=frac)
        what = f"{act}, {tgt}, {shape_name(b, c, sp)}, {'fractional ' if frac else ''}mask"
        cases.append(loss_case(f"kernel_masked_dice_{i}", L.MaskedDiceLoss, opts, x, y, mask=m, what=what))
    # A label map with the background included: MONAI masks the label map before one-hot
    # encoding it (a masked voxel becomes background); segloss masks after (a documented
    # difference), so the case is checked against MONAI on the one-hot form of the same target.
    b, c, sp = 2, 3, S3
    opts, x, y = make(g, "softmax", "labels", b, c, sp)
    opts.update(batch=True)
    m = g.mask(b, sp)
    name = f"kernel_masked_dice_{len(specs)}"
    cases.append(loss_case(name, L.MaskedDiceLoss, opts, x, y, mask=m,
                           what=f"softmax, labels, {shape_name(b, c, sp)}, mask, background included"))
    oh_opts = {k: v for k, v in opts.items() if k != "to_onehot_y"}
    eq = loss_case(name + "_onehot", L.MaskedDiceLoss, oh_opts, x, one_hot(y, num_classes=c), mask=m,
                   what=f"the one-hot form of {name} (segloss's masking of label maps)")
    eq = dict(name=eq.pop("name"), equivalent_of=name, **eq)
    cases.append(eq)
    return cases


def gdl_cases(g):
    specs = [
        ("softmax", "labels", 3, S3, {"w_type": "square"}),
        ("softmax", "labels", 4, S3B, {"w_type": "square", "include_background": False, "batch": True,
                                       "reduction": "none"}),
        ("softmax", "labels", 2, S2, {"w_type": "simple", "reduction": "sum"}),
        ("sigmoid", "multilabel", 2, S3, {"w_type": "simple", "batch": True}),
        ("sigmoid", "soft", 2, S3, {"w_type": "square", "reduction": "none"}),
        ("none", "onehot", 2, S3B, {"w_type": "uniform", "smooth_nr": 0.0, "smooth_dr": 1e-6}),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp)
        opts.update(extra)
        cases.append(loss_case(f"kernel_gdl_{i}", L.GeneralizedDiceLoss, opts, x, y,
                               what=f"{act}, {tgt}, {shape_name(b, c, sp)}"))
    return cases


def tversky_cases(g):
    specs = [
        ("softmax", "labels", 3, S3, {"include_background": False, "alpha": 0.3, "beta": 0.7}),
        ("sigmoid", "multilabel", 2, S3B, {"alpha": 0.7, "beta": 0.3, "batch": True, "reduction": "sum"}),
        ("sigmoid", "multilabel", 1, S2, {"alpha": 0.1, "beta": 0.9}),
        ("none", "soft", 2, S3, {"reduction": "none"}),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp)
        opts.update(extra)
        cases.append(loss_case(f"kernel_tversky_{i}", L.TverskyLoss, opts, x, y,
                               what=f"{act}, {tgt}, {shape_name(b, c, sp)}"))
    return cases


def focal_cases(g):
    # (use_softmax, target, C, spatial, options); "a" = per-class alpha, "w" = per-class weight
    specs = [
        (True, "labels", 3, S3, {"gamma": 2.0}),
        (True, "labels", 4, S3B, {"gamma": 2.0, "alpha": "a"}),
        (True, "onehot", 3, S3, {"gamma": 2.0, "include_background": False, "weight": "w", "reduction": "sum"}),
        (False, "multilabel", 3, S3, {"gamma": 0.0, "reduction": "sum"}),
        (False, "labels", 2, S2, {"gamma": 2.0, "alpha": 0.25, "reduction": "none"}),
        (False, "multilabel", 3, S3, {"gamma": 2.0, "include_background": False, "alpha": "a", "weight": "w"}),
        (False, "multilabel", 1, S3B, {"gamma": 2.0, "alpha": 0.75}),
    ]
    cases = []
    for i, (soft, tgt, c, sp, extra) in enumerate(specs):
        b = 2
        _, x, y = make(g, "sigmoid", tgt, b, c, sp)
        opts = {"use_softmax": soft}
        if tgt == "labels":
            opts["to_onehot_y"] = True
        extra = dict(extra)
        n = c if extra.get("include_background", True) else c - 1
        if extra.get("alpha") == "a":
            extra["alpha"] = [round(float(a), 3) for a in g.rng.uniform(0.1, 0.9, size=n)]
        if extra.get("weight") == "w":
            extra["weight"] = g.weights(n)
        opts.update(extra)
        cases.append(loss_case(f"kernel_focal_{i}", L.FocalLoss, opts, x, y,
                               what=f"{'softmax' if soft else 'sigmoid'} focal, {tgt}, {shape_name(b, c, sp)}"))
    return cases


def dice_ce_cases(g):
    specs = [
        ("softmax", "labels", 3, S3, {}),
        ("softmax", "labels", 4, S3B, {"include_background": False, "label_smoothing": 0.1, "weight": "w",
                                       "batch": True}),
        ("softmax", "labels", 3, S3, {"lambda_dice": 0.5, "lambda_ce": 1.5, "jaccard": True, "squared_pred": True,
                                      "reduction": "sum"}),
        ("softmax", "onehot", 2, S2, {"lambda_ce": 0.0, "weight": "w"}),
        ("sigmoid", "multilabel", 3, S3, {"batch": True}),
        ("sigmoid", "multilabel", 1, S3, {}),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp)
        extra = dict(extra)
        ctor_extra = None
        if extra.pop("weight", None) == "w":
            # DiceCELoss takes a tensor (all C classes; its Dice part drops the first if needed)
            ctor_extra = {"weight": torch.tensor(g.weights(c))}
        opts.update(extra)
        cases.append(loss_case(f"kernel_dice_ce_{i}", L.DiceCELoss, opts, x, y, ctor_extra=ctor_extra,
                               what=f"{act}, {tgt}, {shape_name(b, c, sp)}"))
    return cases


def dice_focal_cases(g):
    specs = [
        ("softmax", "labels", 3, S3, {"gamma": 2.0}),
        ("softmax", "labels", 3, S3B, {"gamma": 2.0, "include_background": False, "weight": "w",
                                       "alpha": 0.25, "reduction": "sum"}),
        ("sigmoid", "multilabel", 3, S3, {"gamma": 1.0, "batch": True, "lambda_dice": 0.5,
                                          "lambda_focal": 2.0}),
        ("sigmoid", "labels", 2, S2, {"gamma": 2.0, "alpha": 0.75, "jaccard": True, "squared_pred": True}),
        ("sigmoid", "multilabel", 1, S3, {"gamma": 2.0}),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp)
        extra = dict(extra)
        if extra.get("weight") == "w":
            extra["weight"] = g.weights(c if extra.get("include_background", True) else c - 1)
        opts.update(extra)
        cases.append(loss_case(f"kernel_dice_focal_{i}", L.DiceFocalLoss, opts, x, y,
                               what=f"{act}, {tgt}, {shape_name(b, c, sp)}"))
    return cases


def gdl_focal_cases(g):
    specs = [
        ("softmax", "labels", 3, S3, {"w_type": "square"}),
        ("softmax", "labels", 3, S3B, {"w_type": "uniform", "include_background": False, "weight": "w",
                                       "reduction": "sum"}),
        ("sigmoid", "multilabel", 3, S3, {"w_type": "simple", "batch": True, "gamma": 1.0,
                                          "lambda_gdl": 0.5, "lambda_focal": 2.0}),
        ("sigmoid", "multilabel", 2, S2, {"w_type": "square"}),
    ]
    cases = []
    for i, (act, tgt, c, sp, extra) in enumerate(specs):
        b = 2
        opts, x, y = make(g, act, tgt, b, c, sp)
        extra = dict(extra)
        if extra.get("weight") == "w":
            extra["weight"] = g.weights(c if extra.get("include_background", True) else c - 1)
        opts.update(extra)
        cases.append(loss_case(f"kernel_gdl_focal_{i}", L.GeneralizedDiceFocalLoss, opts, x, y,
                               what=f"{act}, {tgt}, {shape_name(b, c, sp)}"))
    return cases


def gwdl_cases(g):
    specs = [
        (3, S3, {"weighting_mode": "default"}),
        (4, S3B, {"weighting_mode": "GDL", "reduction": "none"}),
        (2, S2, {"weighting_mode": "default", "reduction": "sum"}),
        (3, S3, {"weighting_mode": "GDL"}),
    ]
    cases = []
    for i, (c, sp, opts) in enumerate(specs):
        b = 2
        x = g.logits(b, c, sp)
        y = g.labels(b, c, sp, absent=c > 2)[:, 0]  # GWDL takes a label map without channel axis
        d = g.rng.uniform(0.2, 1.0, size=(c, c))
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0.0)
        d = np.round(d, 3)
        extra = {"dist_matrix": torch.from_numpy(d)}
        cases.append(loss_case(f"kernel_gwdl_{i}", L.GeneralizedWassersteinDiceLoss, dict(opts), x, y,
                               ctor_extra=extra, what=f"softmax, labels, {shape_name(b, c, sp)}"))
    return cases


def write(out_dir, fname, loss, cases, header):
    path = os.path.join(out_dir, fname)
    text = json.dumps(dict(header, loss=loss, cases=cases), separators=(",", ":"))
    # mtime=0 and no file name in the header: the same cases give the same bytes.
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(text.encode())
    print(f"{fname}: {len(cases)} cases, {len(text) / 1e6:.2f} MB of JSON, {os.path.getsize(path) / 1e6:.2f} MB gzipped")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=20261201)
    a = ap.parse_args()
    if monai.__version__ != "1.6.1":
        raise SystemExit(f"MONAI {monai.__version__}: these cases are for MONAI 1.6.1 (pip install monai==1.6.1)")
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    g = Gen(a.seed)
    header = {"generator": f"MONAI {monai.__version__} on PyTorch {torch.__version__.split('+')[0]}, float64, "
                           "tools/gen_kernel_scale_cases.py", "seed": a.seed}
    total = 0
    for fname, loss, fn in [
        ("dice_loss.json.gz", "DiceLoss", dice_cases),
        ("masked_dice_loss.json.gz", "MaskedDiceLoss", masked_dice_cases),
        ("generalized_dice_loss.json.gz", "GeneralizedDiceLoss", gdl_cases),
        ("tversky_loss.json.gz", "TverskyLoss", tversky_cases),
        ("focal_loss.json.gz", "FocalLoss", focal_cases),
        ("dice_ce_loss.json.gz", "DiceCELoss", dice_ce_cases),
        ("dice_focal_loss.json.gz", "DiceFocalLoss", dice_focal_cases),
        ("generalized_dice_focal_loss.json.gz", "GeneralizedDiceFocalLoss", gdl_focal_cases),
        ("generalized_wasserstein_dice_loss.json.gz", "GeneralizedWassersteinDiceLoss", gwdl_cases),
    ]:
        cases = fn(g)
        total += len(cases)
        write(a.out, fname, loss, cases, header)
    print(f"{total} cases")


if __name__ == "__main__":
    main()
