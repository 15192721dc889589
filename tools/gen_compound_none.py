#!/usr/bin/env python3
"""MONAI reference cases of the Dice-focal compound losses with `reduction = "none"`.

MONAI 1.6.1's DiceFocalLoss and GeneralizedDiceFocalLoss with `reduction="none"` return the
Dice-family term per (sample, class) (per sample for the Generalized Dice, per class with
`batch`) broadcast onto the focal term per voxel: `[B, C', spatial...]`. These cases cover
softmax against label maps and sigmoid against dense multi-label targets, with and without the
background, batch, gamma 0 / 1.5 / 2, focal class weights, lambdas, Jaccard and V-Net squares, 2D
and 3D. (DiceCELoss refuses `reduction="none"` in MONAI 1.6.1.)

Inputs are exactly representable in float32; MONAI computes in float64. Same format as the
project's other reference files (`grad_input` = d sum(expected) / d input).

usage: gen_compound_none.py OUT_DIR   (needs pip install torch monai; MONAI 1.6.1 was used)
"""
import json
import os
import sys

import monai
import torch
from monai import losses as L

from gen_smooth_dr_zero import Gen, case

SEED = 20261202


def dice_focal_cases(g):
    cs = []
    for i, (opts, c, sp, target) in enumerate([
        ({"softmax": True, "to_onehot_y": True}, 3, [4, 5], "labels"),
        ({"softmax": True, "to_onehot_y": True, "include_background": False, "gamma": 1.5}, 4, [3, 4, 3], "labels"),
        ({"softmax": True, "to_onehot_y": True, "batch": True, "lambda_dice": 0.5, "lambda_focal": 2.0,
          "weight": [0.2, 1.0, 3.0]}, 3, [5, 4], "labels"),
        ({"softmax": True, "to_onehot_y": True, "jaccard": True, "squared_pred": True, "gamma": 0.0}, 3, [3, 3, 3], "labels"),
        ({"sigmoid": True}, 2, [4, 6], "multi"),
        ({"sigmoid": True, "include_background": False, "batch": True, "gamma": 1.0}, 3, [3, 4, 2], "multi"),
    ]):
        opts = dict(opts, reduction="none")
        y = g.labels(2, c, sp) if target == "labels" else g.multilabel(2, c, sp)
        name = f"dice_focal_none_{i}_" + ("softmax" if "softmax" in opts else "sigmoid")
        cs.append(case(name, L.DiceFocalLoss, opts, g.logits([2, c] + sp), y))
    return cs


def gdl_focal_cases(g):
    cs = []
    for i, (opts, c, sp, target) in enumerate([
        ({"softmax": True, "to_onehot_y": True}, 3, [4, 5], "labels"),
        ({"softmax": True, "to_onehot_y": True, "include_background": False, "w_type": "simple",
          "gamma": 1.5}, 4, [3, 4, 3], "labels"),
        ({"softmax": True, "to_onehot_y": True, "batch": True, "lambda_gdl": 0.5, "lambda_focal": 2.0,
          "w_type": "uniform"}, 3, [5, 4], "labels"),
        ({"sigmoid": True, "weight": [0.5, 2.0]}, 2, [4, 6], "multi"),
    ]):
        opts = dict(opts, reduction="none")
        y = g.labels(2, c, sp) if target == "labels" else g.multilabel(2, c, sp)
        name = f"gdl_focal_none_{i}_" + ("softmax" if "softmax" in opts else "sigmoid")
        cs.append(case(name, L.GeneralizedDiceFocalLoss, opts, g.logits([2, c] + sp), y))
    return cs


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    g = Gen(SEED)
    generator = (f"MONAI {monai.__version__} on PyTorch {torch.__version__.split('+')[0]}, float64, "
                 "tools/gen_compound_none.py")
    for stem, loss, make in [
        ("dice_focal_loss", "DiceFocalLoss", dice_focal_cases),
        ("generalized_dice_focal_loss", "GeneralizedDiceFocalLoss", gdl_focal_cases),
    ]:
        cases = make(g)
        path = os.path.join(out, f"compound_none_{stem}.json")
        with open(path, "w") as f:
            json.dump({"generator": generator, "seed": SEED, "loss": loss, "cases": cases}, f, separators=(",", ":"))
        print(f"{path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
