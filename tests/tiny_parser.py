"""Small SegFormer human parsers saved exactly like fashn-ai/fashn-human-parser.

The published folder holds ``config.json`` + ``model.safetensors`` of a
``SegformerForSemanticSegmentation`` with 18 labels; these builders write the
same two files, so tests exercise the real ``from_pretrained`` loading code.

* :func:`build_human_parser`: random weights (structure, speed, determinism).
* :func:`build_colour_keyed_parser`: the same architecture with weights set by
  hand so each pixel's class is the palette colour (``masks.PALETTE``) nearest
  to it, which makes parses of painted test images predictable.
* :func:`build_full_size_parser_config`: the SegFormer-B4 shape of the real
  parser, for benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from comfyui_model_swap.nodes.pipeline.masks import PALETTE
from comfyui_model_swap.nodes.pipeline.parsing import IMAGENET_MEAN, IMAGENET_STD, LABELS


def _label_maps() -> dict:
    return {
        "id2label": {i: name for i, name in enumerate(LABELS)},
        "label2id": {name: i for i, name in enumerate(LABELS)},
    }


def tiny_parser_config() -> SegformerConfig:
    """A SegFormer small enough to run a 384x576 forward pass in milliseconds on CPU."""
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 16, 16],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16,
        num_labels=len(LABELS),
        **_label_maps(),
    )


def build_full_size_parser_config() -> SegformerConfig:
    """SegFormer-B4 with 18 classes: the shape of FASHN's published parser."""
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[3, 8, 27, 3],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[64, 128, 320, 512],
        num_attention_heads=[1, 2, 5, 8],
        mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=768,
        num_labels=len(LABELS),
        **_label_maps(),
    )


def _save(model: SegformerForSemanticSegmentation, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_human_parser(folder: Path, config: SegformerConfig | None = None, seed: int = 0) -> Path:
    """Save a random-weight 18-class SegFormer (tiny unless ``config`` is given) in ``folder``."""
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config or tiny_parser_config()).eval()
    return _save(model, folder)


def build_colour_keyed_parser(folder: Path, palette: np.ndarray = PALETTE) -> Path:
    """Save a tiny SegFormer whose class for a pixel is the nearest ``palette`` colour.

    How the real architecture is made to compute it (n = the pixel after
    ImageNet normalisation, n_k = palette colour k normalised the same way):

    * stage 1 patch embedding: centre tap only, channels (n, c, -n, -c) with a
      constant c from the bias; the +/- pairs make the LayerNorm mean exactly 0,
      so LayerNorm only rescales the vector by some s > 0;
    * every transformer block adds zero (attention ``o_proj`` and MLP ``fc2``
      are zero), so the stage passes that vector on;
    * the decode head uses stage 1 only (the other projections are zero),
      carries u and -u through the ReLU, and the classifier computes
      s * (2 n.n_k - |n_k|^2 * c / c); since s is shared by all classes the
      argmax is the nearest n_k.

    Features are sampled every 4 pixels of the 384x576 input, so class
    boundaries blur by a few pixels once upsampled; region interiors are exact.
    """
    torch.manual_seed(0)
    config = tiny_parser_config()
    model = SegformerForSemanticSegmentation(config).eval()
    h0, d = config.hidden_sizes[0], config.decoder_hidden_size
    assert h0 == 8 and d >= 2 * h0, "the construction needs 8 stage-1 channels"
    const = 1.0
    protos = (np.asarray(palette, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # (18, 3)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
        stage0 = model.segformer.stages[0].patch_embeddings.proj  # Conv2d(3, 8, 7, stride 4, pad 3)
        centre = stage0.kernel_size[0] // 2
        for c in range(3):
            stage0.weight[c, c, centre, centre] = 1.0
            stage0.weight[c + 4, c, centre, centre] = -1.0
        stage0.bias[3] = const
        stage0.bias[7] = -const

        proj = model.decode_head.linear_projections[0].proj  # Linear(8, d)
        proj.weight[:h0, :h0] = torch.eye(h0)
        proj.weight[h0 : 2 * h0, :h0] = -torch.eye(h0)
        fuse = model.decode_head.linear_fuse  # Conv2d(4d, d, 1); stage 1 comes last in the concat
        n_stages = config.num_encoder_blocks
        fuse.weight[:, (n_stages - 1) * d :, 0, 0] = torch.eye(d)
        bn = model.decode_head.batch_norm
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)

        cls = model.decode_head.classifier  # Conv2d(d, 18, 1); input is (relu(u), relu(-u))
        w = torch.zeros(len(protos), h0)
        w[:, :3] = torch.from_numpy(2.0 * protos)
        w[:, 3] = torch.from_numpy(-(protos**2).sum(axis=1) / const)
        cls.weight[:, :h0, 0, 0] = w
        cls.weight[:, h0 : 2 * h0, 0, 0] = -w
    return _save(model, folder)
