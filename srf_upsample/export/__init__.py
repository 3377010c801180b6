"""ONNX export of upsamplers (SRFUpsample, DySample, CARAFE) and of patched detector backbones, with a parity check.

The optional ``[export]`` extra (``onnx``, ``onnxscript``, ``onnxruntime``) is imported inside functions only, so
``import srf_upsample.export`` works without it. Graphs are written by ``torch.onnx.export(..., dynamo=True)`` and hold
only standard operators of the default ONNX domain (see ``docs/export.md``). One job per module: ``_onnx`` (the ONNX
side: extras, opset, writing, sessions), ``_generator`` (one upsampler), ``_backbone`` (a patched backbone + FPN),
``_parity`` (onnxruntime vs. PyTorch) and ``cli`` (``srf-upsample export``).
"""

from ._backbone import export_backbone as export_backbone
from ._generator import GeneratorExportWrapper as GeneratorExportWrapper
from ._generator import export_generator as export_generator
from ._onnx import DEFAULT_OPSET as DEFAULT_OPSET
from ._onnx import SUPPORTED_OPSETS as SUPPORTED_OPSETS
from ._onnx import inference_session as inference_session
from ._onnx import onnx_operators as onnx_operators
from ._parity import DEFAULT_PARITY_SIZES as DEFAULT_PARITY_SIZES
from ._parity import PARITY_TOLERANCE as PARITY_TOLERANCE
from ._parity import ParityResult as ParityResult
from ._parity import check_backbone_parity as check_backbone_parity
from ._parity import check_generator_parity as check_generator_parity
from .cli import main as main

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_PARITY_SIZES",
    "PARITY_TOLERANCE",
    "SUPPORTED_OPSETS",
    "GeneratorExportWrapper",
    "ParityResult",
    "check_backbone_parity",
    "check_generator_parity",
    "export_backbone",
    "export_generator",
    "inference_session",
    "main",
    "onnx_operators",
]
