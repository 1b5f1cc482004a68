"""Evaluate a trained checkpoint on one split of a patch dataset (IoU, F1, precision, recall, accuracy, AUCs).

    python jobs/evaluate.py --checkpoint runs/dev/checkpoints/best.pt --data ROOT [--split test] [--output m.json]
The model, normalization and threshold come from the checkpoint (`--threshold` overrides the threshold);
workers and batch size from the config's train section.
"""
import argparse
import json

from _cli import add_config_args, config_from_args, run_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="a segcore checkpoint (best.pt or last.pt)")
    parser.add_argument("--data", required=True, metavar="ROOT", help="patch dataset root, local or s3://")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from segcore.pipelines.evaluate import run_evaluation
    from segcore.storage import write_bytes

    metrics = run_evaluation(cfg, args.checkpoint, args.data, args.split, args.threshold)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        write_bytes(args.output, text.encode(), cfg.s3)
    return 0


if __name__ == "__main__":
    run_main(main)
