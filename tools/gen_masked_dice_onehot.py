#!/usr/bin/env python3
"""MONAI's MaskedDiceLoss on the one-hot form of label-map cases (segloss's documented mask semantics).

MONAI 1.6.1 multiplies a *label map* by the mask before one-hot encoding it, so a masked voxel
becomes class 0: it still counts as a background voxel of the target (a missed background voxel,
since the prediction is masked to 0 there). With a one-hot target the mask zeroes every channel
and masked voxels count for nothing, which is what segloss does for label maps too.

For every case of masked_dice_loss.json with `to_onehot_y` and the background included, this
writes the same case with the target one-hot encoded first (`to_onehot_y: false`), computed by
MONAI, with `equivalent_of` naming the original case. segloss must match these values on the
original label-map case.

usage: gen_masked_dice_onehot.py IN_DIR OUT_FILE   (needs pip install torch monai)
"""
import json
import os
import sys

import monai
import torch
from monai import losses as L
from monai.networks.utils import one_hot

torch.set_default_dtype(torch.float64)


def tensor(a):
    return torch.tensor(a["data"], dtype=torch.float64).reshape(a["shape"])


def as_json(t):
    t = t.detach().to(torch.float64)
    return {"shape": list(t.shape), "data": t.reshape(-1).tolist()}


def main():
    src, out = sys.argv[1], sys.argv[2]
    data = json.load(open(os.path.join(src, "masked_dice_loss.json")))
    cases = []
    for case in data["cases"]:
        opts = case["options"]
        if not opts.get("to_onehot_y") or not opts.get("include_background", True):
            continue
        x = tensor(case["input"]).requires_grad_(True)
        c = x.shape[1]
        y = one_hot(tensor(case["target"]), num_classes=c)
        mask = tensor(case["mask"])
        new_opts = {k: v for k, v in opts.items() if k != "to_onehot_y"}
        result = L.MaskedDiceLoss(**new_opts)(x, y, mask)
        result.sum().backward()
        cases.append({
            "name": case["name"] + "_onehot",
            "equivalent_of": case["name"],
            "options": new_opts,
            "input": case["input"],
            "target": as_json(y),
            "mask": case["mask"],
            "expected": as_json(result),
            "grad_input": as_json(x.grad),
        })
    header = {"generator": f"MONAI {monai.__version__} on PyTorch {torch.__version__.split('+')[0]}, float64, "
                           "tools/gen_masked_dice_onehot.py", "loss": "MaskedDiceLoss", "cases": cases}
    with open(out, "w") as f:
        json.dump(header, f, separators=(",", ":"))
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
