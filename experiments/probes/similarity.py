"""Raw-CAM mIoU of each `clip.similarity` path, with and without PAR and attention propagation.

Usage: python experiments/probes/similarity.py CHECKPOINT maskclip,surgery,raw,gradcam [N_IMAGES]
(reports/benchmark.md, "Which dense path localises").
"""
import sys, torch, numpy as np, torch.nn.functional as F
from dfa.config import load_config
from dfa.stages.common import class_spec, layout_of
from dfa.stages.views import extractor, normalise, square_view
from dfa.data.io import read_image, read_mask
from dfa.data.dataset import load_labels
from dfa.metrics import confusion_matrix, miou
from dfa.refine import cams_to_label, PAR, product_refine
from dfa.affinity import sinkhorn_normalize
ck = sys.argv[1]; sims = sys.argv[2].split(","); n = int(sys.argv[3]) if len(sys.argv)>3 else 200
for sim in sims:
    cfg = load_config("params.yaml", ["tracking.enabled=false", f"clip.checkpoint={ck}", f"clip.similarity={sim}"])
    spec = class_spec(cfg); lay = layout_of(cfg); labels = load_labels(lay.labels_path())
    ext = extractor(cfg, spec, "cpu"); names = lay.read_list("train")[:n]
    C = spec.num_classes; confs = {k: torch.zeros(C, C, dtype=torch.long) for k in ["cam","cam_par","attn","attn_par"]}
    par = PAR()
    for i in range(0, len(names), 25):
        sub = names[i:i+25]; raw = [read_image(lay.image_path(x)) for x in sub]; gts=[read_mask(lay.mask_path(x)) for x in sub]
        crop = cfg.data.crop_size
        img = normalise(np.stack([square_view(r, crop) for r in raw]), cfg)
        pres = torch.tensor(np.stack([labels[x] for x in sub]) > 0)
        f = ext(img, pres)
        cams = {"cam": f.sim * pres[:, None]}
        cams["attn"] = product_refine([f.attn.mean(1)], cams["cam"])
        for k in ["cam","attn"]:
            c = cams[k].transpose(1,2).reshape(len(sub), -1, *f.grid)
            c = F.interpolate(c, size=(crop,crop), mode="bilinear", align_corners=False).clamp(0,1)
            sc = cams_to_label(c, pres, 1.0)
            scp = par(img, sc)
            for kk, s in ((k, sc), (k+"_par", scp)):
                s = s.masked_fill(~torch.cat([torch.ones_like(pres[:, :1]), pres], 1)[:, :, None, None], -1)
                for j, g in enumerate(gts):
                    p = F.interpolate(s[j:j+1], size=g.shape, mode="bilinear", align_corners=False)[0].argmax(0)
                    confs[kk] += confusion_matrix(p, torch.from_numpy(g.astype(np.int64)), C)
    print(sim, {k: round(100*miou(v)[0],1) for k, v in confs.items()}, flush=True)
