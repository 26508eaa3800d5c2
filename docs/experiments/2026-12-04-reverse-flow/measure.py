"""How far L^o_fbc's negated forward flow is from the true backward flow, on the demo's prepared frames.
For annotated frames k of the train split and t in {-2,-1,1,2}: Farneback k->k+t (what compute-flows stores) and
k+t->k; the opposite term warps frame k onto frame k+t with -flow(k->k+t) (ours) or flow(k+t->k) (exact).
Reports the end-point error of the approximation and the opposite term on the frames themselves (RGB in [0,1]
as features, pixel_mean reduction) with each flow, beside the standard term."""
import json
import sys

import numpy as np
import torch

from losh.data.dataset import RVOSDataset
from losh.models.shared.warp import warp_by_flow
from losh.pipeline.flow_field import farneback, gray_from_bgr

prep = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
ds = RVOSDataset(prep, "train", with_flows=False, seed=0)
rng = np.random.default_rng(0)
idx = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
epe, mag, lo_apx, lo_ex, l_std = [], [], [], [], []
def term(source, target, flow):
    w, v = warp_by_flow(source[None], flow[None])
    v = v.float()
    return float((((w - target[None]) ** 2) * v).sum() / v.sum().clamp(min=1))
for i in idx:
    item = ds[int(i)]
    frames = item["frames"]            # (T, 3, H, W) normalised? undo below
    f = frames.float()
    f = (f - f.amin()) / (f.amax() - f.amin() + 1e-6)
    k = item["annotated_index"]
    to_u8 = lambda x: (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)[..., ::-1].copy()
    for t in (-2, -1, 1, 2):
        if not 0 <= k + t < f.shape[0]:
            continue
        gk, gt = gray_from_bgr(to_u8(f[k])), gray_from_bgr(to_u8(f[k + t]))
        fwd = torch.from_numpy(farneback(gk, gt)).permute(2, 0, 1)    # k -> k+t
        bwd = torch.from_numpy(farneback(gt, gk)).permute(2, 0, 1)    # k+t -> k
        epe.append(float((( -fwd - bwd) ** 2).sum(0).sqrt().mean())); mag.append(float((bwd ** 2).sum(0).sqrt().mean()))
        lo_apx.append(term(f[k], f[k + t], -fwd)); lo_ex.append(term(f[k], f[k + t], bwd)); l_std.append(term(f[k + t], f[k], fwd))
print(json.dumps({"pairs": len(epe), "mean_epe_px": round(np.mean(epe), 4), "mean_backward_flow_px": round(np.mean(mag), 4),
                  "opposite_term_negated_forward": round(np.mean(lo_apx), 6), "opposite_term_exact_backward": round(np.mean(lo_ex), 6),
                  "standard_term": round(np.mean(l_std), 6),
                  "frame_size": list(f.shape[-2:])}, indent=1))
