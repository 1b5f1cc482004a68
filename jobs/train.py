"""Train RefineNet with DDP on Ray Train.

    python jobs/train.py --config configs/dev.yaml --set train.data_root=ROOT --set train.run_dir=runs/dev
    python jobs/train.py --config configs/dev.yaml --resume runs/dev          # continue at the next epoch
    ray job submit --working-dir . -- python jobs/train.py --config configs/train.yaml --set ...
Ray starts once the inputs are checked: `ray.init()` connects to a running cluster (ray job submit, or
RAY_ADDRESS) and otherwise starts a local one.
"""
import argparse

from _cli import add_config_args, config_from_args, run_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    args = parser.parse_args()
    from segcore.pipelines.train import resume_config, run_training

    # A resumed run keeps its own settings (data, model, ...): the command line changes only what it names.
    cfg = resume_config(args.resume, args.config, args.overrides) if args.resume else config_from_args(args)

    metrics = run_training(cfg, resume=args.resume)
    run_dir = args.resume or cfg.train.run_dir
    print(f"done: epoch {metrics.get('epoch')}, val IoU {metrics.get('val_iou', float('nan')):.4f}; "
          f"best checkpoint {run_dir}/checkpoints/best.pt")
    return 0


if __name__ == "__main__":
    run_main(main)
