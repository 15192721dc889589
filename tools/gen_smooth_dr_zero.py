#!/usr/bin/env python3
"""MONAI reference cases with `smooth_dr = 0` (no denominator smoothing), one file per loss.

MONAI accepts `smooth_dr = 0`, and its own test suite uses it in five Dice-family cases
(tests/losses/test_dice_loss.py, test_masked_dice_loss.py, test_tversky_loss.py and two in
test_generalized_dice_loss.py): their options and inputs are reproduced here as the `monai_test_*`
cases. The other cases are made here: softmax, sigmoid and probability inputs, batch Dice,
Jaccard, V-Net, the compound losses and the Generalized Wasserstein Dice loss, all with
`smooth_dr = 0` and no class whose denominator is 0, plus the `*_nan` / `*_neg_inf` cases, where a
class (or, for the Generalized Dice loss, every class of a sample) is empty in the target and
nothing is predicted for it: MONAI then gives NaN (`smooth_nr = 0`, 0/0) or -inf
(`smooth_nr > 0`), and a NaN gradient for that class's inputs.

Inputs are exactly representable in float32; MONAI computes in float64. Same format as the
project's other reference files (`loss`, `cases` with `options`, `input`, `target`, optional
`mask`, `expected`, `grad_input` = d sum(expected) / d input; NaN stored as null, infinities as
"inf" / "-inf").

usage: gen_smooth_dr_zero.py OUT_DIR   (needs pip install torch monai; MONAI 1.6.1 was used)
"""
import json
import math
import os
import sys

import monai
import numpy as np
import torch
from monai import losses as L

torch.set_default_dtype(torch.float64)
SEED = 20261201


def tensor_json(t):
    t = torch.as_tensor(t).detach().to(torch.float64)
    data = [None if math.isnan(v) else (("inf" if v > 0 else "-inf") if math.isinf(v) else v)
            for v in t.reshape(-1).tolist()]
    return {"shape": list(t.shape), "data": data}


def f32(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32)).to(torch.float64)


def case(name, cls, opts, x, y, mask=None, ctor_extra=None):
    kwargs = dict(opts, **(ctor_extra or {}))
    x = f32(x).clone().requires_grad_(True)
    y = f32(y)
    extra = (f32(mask),) if mask is not None else ()
    out = cls(**kwargs)(x, y, *extra)
    out.sum().backward()
    options = dict(opts, **{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in (ctor_extra or {}).items()})
    c = {"name": name, "options": options, "input": tensor_json(x), "target": tensor_json(y),
         "expected": tensor_json(out), "grad_input": tensor_json(x.grad)}
    if mask is not None:
        c["mask"] = tensor_json(f32(mask))
    return c


class Gen:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def logits(self, shape, scale=2.0):
        return self.rng.normal(0, scale, size=shape)

    def probs(self, shape):
        return self.rng.uniform(0.05, 0.95, size=shape)

    def labels(self, b, c, spatial):
        """A label map (B, 1, ...) in which every class occurs in every sample."""
        n = int(np.prod(spatial))
        lab = np.stack([self.rng.permutation(np.arange(n) % c) for _ in range(b)])
        return lab.reshape([b, 1] + spatial).astype(np.float64)

    def multilabel(self, b, c, spatial):
        """A binary multi-label target (B, C, ...) with every channel non-empty in every sample."""
        t = self.rng.random(size=[b, c] + spatial) < 0.4
        flat = t.reshape(b, c, -1)
        flat[:, :, 0] = True
        return t.astype(np.float64)


# The five cases of MONAI's test suite that use smooth_dr = 0 (inputs and options as written there).
MONAI_X = [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]
MONAI_Y = [[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]
MONAI_OPTS = {"include_background": False, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0}


def dice_cases(g):
    cs = [case("monai_test_dice_loss_smooth_0", L.DiceLoss, MONAI_OPTS, MONAI_X, MONAI_Y)]
    b, c, sp = 2, 3, [4, 5]
    cs.append(case("dice_softmax_labels_none", L.DiceLoss,
                   {"softmax": True, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "none"},
                   g.logits([b, c] + sp), g.labels(b, c, sp)))
    sp3 = [3, 4, 3]
    cs.append(case("dice_softmax_labels_batch_jaccard", L.DiceLoss,
                   {"softmax": True, "to_onehot_y": True, "include_background": False, "batch": True,
                    "jaccard": True, "smooth_dr": 0.0},
                   g.logits([2, 4] + sp3), g.labels(2, 4, sp3)))
    cs.append(case("dice_sigmoid_multilabel_squared_sum", L.DiceLoss,
                   {"sigmoid": True, "squared_pred": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "sum"},
                   g.logits([3, 2] + sp), g.multilabel(3, 2, sp)))
    cs.append(case("dice_probabilities_weight_mean", L.DiceLoss,
                   {"to_onehot_y": True, "smooth_dr": 0.0, "weight": [0.5, 1.0, 2.0]},
                   g.probs([2, 3] + sp), g.labels(2, 3, sp)))
    # Class 1 of sample 0 is empty in the target and in the (probability) prediction: P + G = 0.
    x = [[[0.75, 0.5, 1.0], [0.0, 0.0, 0.0]], [[1.0, 0.25, 1.0], [0.0, 0.75, 0.0]]]
    y = [[[0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]
    cs.append(case("dice_empty_class_nan", L.DiceLoss,
                   {"to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "none"}, x, y))
    cs.append(case("dice_empty_class_neg_inf", L.DiceLoss,
                   {"to_onehot_y": True, "smooth_dr": 0.0, "reduction": "none"}, x, y))
    return cs


def masked_dice_cases(g):
    mask = [[[1.0, 1.0, 1.0]], [[0.0, 1.0, 0.0]]]
    cs = [case("monai_test_masked_dice_loss_smooth_0", L.MaskedDiceLoss, MONAI_OPTS, MONAI_X, MONAI_Y, mask=mask)]
    b, c, sp = 2, 3, [4, 4]
    m = (g.rng.random(size=[b, 1] + sp) < 0.7).astype(np.float64)
    cs.append(case("masked_dice_softmax_onehot", L.MaskedDiceLoss,
                   {"softmax": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "none"},
                   g.logits([b, c] + sp), g.multilabel(b, c, sp), mask=m))
    return cs


def gdl_cases(g):
    opts = dict(MONAI_OPTS)
    cs = [case("monai_test_generalized_dice_loss_smooth_0", L.GeneralizedDiceLoss, opts, MONAI_X, MONAI_Y)]
    cs.append(case("monai_test_generalized_dice_loss_simple_smooth_0", L.GeneralizedDiceLoss,
                   {"include_background": True, "to_onehot_y": True, "softmax": True, "w_type": "simple",
                    "smooth_nr": 0, "smooth_dr": 0},
                   [[[0.0, 10.0, 10.0, 10.0], [10.0, 0.0, 0.0, 0.0]]], [[[1, 1, 0, 0]]]))
    sp = [3, 4, 2]
    # Class 2 is empty in sample 1: its infinite 1/V^2 weight becomes the sample's largest weight.
    y = g.labels(2, 3, sp)
    y[1][y[1] == 2] = 0
    cs.append(case("gdl_softmax_square_empty_class", L.GeneralizedDiceLoss,
                   {"softmax": True, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "none"},
                   g.logits([2, 3] + sp), y))
    cs.append(case("gdl_sigmoid_uniform_batch", L.GeneralizedDiceLoss,
                   {"sigmoid": True, "w_type": "uniform", "batch": True, "smooth_dr": 0.0, "reduction": "sum"},
                   g.logits([2, 3, 5, 4]), g.multilabel(2, 3, [5, 4])))
    # Every class of sample 0 is empty in the target: all weights are 0, so is the denominator.
    y = g.multilabel(2, 2, [3, 3])
    y[0] = 0
    x = g.logits([2, 2, 3, 3])
    cs.append(case("gdl_empty_sample_nan", L.GeneralizedDiceLoss,
                   {"sigmoid": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "none"}, x, y))
    cs.append(case("gdl_empty_sample_neg_inf", L.GeneralizedDiceLoss,
                   {"sigmoid": True, "smooth_dr": 0.0, "reduction": "none"}, x, y))
    return cs


def tversky_cases(g):
    cs = [case("monai_test_tversky_loss_smooth_0", L.TverskyLoss, MONAI_OPTS, MONAI_X, MONAI_Y)]
    sp = [4, 3, 3]
    cs.append(case("tversky_softmax_alpha_beta_none", L.TverskyLoss,
                   {"softmax": True, "to_onehot_y": True, "alpha": 0.3, "beta": 0.7, "smooth_nr": 0.0,
                    "smooth_dr": 0.0, "reduction": "none"},
                   g.logits([2, 3] + sp), g.labels(2, 3, sp)))
    cs.append(case("tversky_sigmoid_batch_mean", L.TverskyLoss,
                   {"sigmoid": True, "batch": True, "alpha": 0.7, "beta": 0.3, "smooth_dr": 0.0},
                   g.logits([3, 2, 4, 4]), g.multilabel(3, 2, [4, 4])))
    return cs


def dice_ce_cases(g):
    sp = [4, 3, 3]
    return [
        case("dice_ce_softmax_labels", L.DiceCELoss,
             {"softmax": True, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0},
             g.logits([2, 3] + sp), g.labels(2, 3, sp)),
        case("dice_ce_sigmoid_binary_sum", L.DiceCELoss,
             {"sigmoid": True, "smooth_dr": 0.0, "reduction": "sum", "lambda_dice": 0.5},
             g.logits([2, 1, 5, 4]), g.multilabel(2, 1, [5, 4])),
    ]


def dice_focal_cases(g):
    sp = [3, 5]
    return [
        case("dice_focal_softmax_labels", L.DiceFocalLoss,
             {"softmax": True, "to_onehot_y": True, "include_background": False, "smooth_nr": 0.0,
              "smooth_dr": 0.0, "gamma": 2.0},
             g.logits([2, 3] + sp), g.labels(2, 3, sp)),
        case("dice_focal_sigmoid_batch_sum", L.DiceFocalLoss,
             {"sigmoid": True, "batch": True, "smooth_dr": 0.0, "reduction": "sum", "gamma": 1.0},
             g.logits([2, 2] + sp), g.multilabel(2, 2, sp)),
    ]


def gdl_focal_cases(g):
    sp = [3, 3, 3]
    return [
        case("gdl_focal_softmax_labels", L.GeneralizedDiceFocalLoss,
             {"softmax": True, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0},
             g.logits([2, 3] + sp), g.labels(2, 3, sp)),
        case("gdl_focal_sigmoid_simple_sum", L.GeneralizedDiceFocalLoss,
             {"sigmoid": True, "w_type": "simple", "smooth_dr": 0.0, "reduction": "sum"},
             g.logits([2, 2, 4, 4]), g.multilabel(2, 2, [4, 4])),
    ]


def gwdl_cases(g):
    d = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
    sp = [4, 3]
    return [
        case("gwdl_default_smooth_0", L.GeneralizedWassersteinDiceLoss,
             {"weighting_mode": "default", "smooth_nr": 0.0, "smooth_dr": 0.0, "reduction": "none"},
             g.logits([2, 3] + sp), g.labels(2, 3, sp)[:, 0], ctor_extra={"dist_matrix": torch.from_numpy(d)}),
        case("gwdl_gdl_smooth_dr_0", L.GeneralizedWassersteinDiceLoss,
             {"weighting_mode": "GDL", "smooth_dr": 0.0, "reduction": "mean"},
             g.logits([2, 3] + sp), g.labels(2, 3, sp)[:, 0], ctor_extra={"dist_matrix": torch.from_numpy(d)}),
    ]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    g = Gen(SEED)
    generator = (f"MONAI {monai.__version__} on PyTorch {torch.__version__.split('+')[0]}, float64, "
                 "tools/gen_smooth_dr_zero.py")
    files = [
        ("dice_loss", "DiceLoss", dice_cases),
        ("masked_dice_loss", "MaskedDiceLoss", masked_dice_cases),
        ("generalized_dice_loss", "GeneralizedDiceLoss", gdl_cases),
        ("tversky_loss", "TverskyLoss", tversky_cases),
        ("dice_ce_loss", "DiceCELoss", dice_ce_cases),
        ("dice_focal_loss", "DiceFocalLoss", dice_focal_cases),
        ("generalized_dice_focal_loss", "GeneralizedDiceFocalLoss", gdl_focal_cases),
        ("generalized_wasserstein_dice_loss", "GeneralizedWassersteinDiceLoss", gwdl_cases),
    ]
    for stem, loss, make in files:
        cases = make(g)
        path = os.path.join(out, f"smooth_dr_zero_{stem}.json")
        with open(path, "w") as f:
            json.dump({"generator": generator, "seed": SEED, "loss": loss, "cases": cases}, f, separators=(",", ":"))
        print(f"{path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
