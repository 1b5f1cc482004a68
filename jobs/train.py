"""`python jobs/train.py --help`: see segcore.cli.TRAIN (the installed `segcore-train` runs the same)."""
from segcore.cli import train

if __name__ == "__main__":
    train()
