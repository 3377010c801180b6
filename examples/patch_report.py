"""Patch a torchvision Mask R-CNN with SRFUpsample and print the report (no downloads: weights=None)."""

import torch
import torchvision

from srf_upsample import SRFUpsample, patch_fpn

torch.manual_seed(0)
model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
# One shared generator per channel count (256 here), as the paper shares G across pyramid levels. The "lite"
# variant keeps this example quick on a CPU; drop the argument for the paper's configuration.
model, report = patch_fpn(model, lambda channels: SRFUpsample(channels, variant="lite"))
print(report)

model.eval()
with torch.no_grad():
    detections = model([torch.rand(3, 321, 479)])  # another (odd) size than the one patch_fpn ran on
print(f"detections on a 321x479 image: {len(detections[0]['boxes'])} boxes")
