"""Smoke-run a model: ``python -m segcore.model [--backbone resnet50] [--decoder-width 256] [--size 384]``.

Builds it with random weights (nothing is downloaded), runs one forward pass on a
1x3xSIZExSIZE tensor and prints the output shape and the parameter count.
"""

import argparse

import torch

from segcore.model import build_model, count_parameters
from segcore.model.refinenet import RESNET_BACKBONES


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segcore.model", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=sorted(RESNET_BACKBONES))
    parser.add_argument("--decoder-width", type=int, default=256)
    parser.add_argument("--size", type=int, default=384, help="input height and width (a multiple of 32)")
    args = parser.parse_args()

    model = build_model("refinenet", args.backbone, args.decoder_width, pretrained=False).eval()
    image = torch.rand(1, 3, args.size, args.size)
    with torch.no_grad():
        try:
            logits = model(image)
        except ValueError as error:
            parser.error(str(error))
    print(f"refinenet/{args.backbone} decoder_width={args.decoder_width}")
    print(f"output shape: {tuple(logits.shape)}")
    print(f"parameters: {count_parameters(model):,}")


if __name__ == "__main__":
    main()
