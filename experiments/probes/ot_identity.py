"""OT refinement (method.md §5) with the identity affinity: how much the OT step alone changes the raw CAM.

Usage: python experiments/probes/ot_identity.py   (reports/benchmark.md, "What the refinement steps do here").
"""
import torch, numpy as np, torch.nn.functional as F
from dfa.config import load_config
from dfa.stages.common import class_spec, layout_of
from dfa.stages.views import extractor, normalise, square_view
from dfa.data.io import read_image, read_mask
from dfa.data.dataset import load_labels
from dfa.metrics import confusion_matrix, miou
from dfa.refine import cams_to_label
from dfa.ot import ot_refine, column_marginal
from dfa.backbone.clip import minmax_tokens
cfg = load_config("params.yaml", ["tracking.enabled=false"])
spec = class_spec(cfg); lay = layout_of(cfg); labels = load_labels(lay.labels_path())
ext = extractor(cfg, spec, "cpu"); names = lay.read_list("train")[:150]
C = spec.num_classes; variants = ["cam", "ot_col_temp", "ot_col_area", "ot_nocol_area", "ot_col_temp_eps03", "ot_col_temp_bgcol"]
confs = {k: torch.zeros(C, C, dtype=torch.long) for k in variants}
for i in range(0, len(names), 25):
    sub = names[i:i+25]; raw = [read_image(lay.image_path(x)) for x in sub]; gts=[read_mask(lay.mask_path(x)) for x in sub]
    img = normalise(np.stack([square_view(r, 64) for r in raw]), cfg)
    pres = torch.tensor(np.stack([labels[x] for x in sub]) > 0)
    f = ext(img, pres); S = f.sim * pres[:, None]
    s_all = torch.cat([f.sim_bg[..., None], S], -1); valid = torch.cat([torch.ones_like(pres[:, :1]), pres], -1)
    out = {"cam": (S, None)}
    v = column_marginal(s_all, "tempered", 0.1, valid); mr = ot_refine(s_all, v, 0.1); out["ot_col_temp"] = (mr[..., 1:], None)
    out["ot_col_temp_bgcol"] = (mr[..., 1:], mr[..., 0])
    v = column_marginal(s_all, "area", 0.1, valid); mr = ot_refine(s_all, v, 0.1); out["ot_col_area"] = (mr[..., 1:], None)
    v = column_marginal(S, "area", 0.1, pres); mr = ot_refine(S, v, 0.1); out["ot_nocol_area"] = (mr, None)
    v = column_marginal(s_all, "tempered", 0.1, valid); mr = ot_refine(s_all, v, 0.3); out["ot_col_temp_eps03"] = (mr[..., 1:], None)
    for k, (c, bg) in out.items():
        c = c.transpose(1,2).reshape(len(sub), -1, 8, 8); c = F.interpolate(c, size=(64,64), mode="bilinear").clamp(0,1)
        if bg is not None: bg = F.interpolate(bg.reshape(len(sub),1,8,8), size=(64,64), mode="bilinear")
        sc = cams_to_label(c, pres, 1.0, bg=bg, invalid_value=-1)
        for j, g in enumerate(gts):
            p = F.interpolate(sc[j:j+1], size=g.shape, mode="bilinear")[0].argmax(0)
            confs[k] += confusion_matrix(p, torch.from_numpy(g.astype(np.int64)), C)
print({k: round(100*miou(v)[0],1) for k, v in confs.items()})
