"""`python jobs/evaluate.py --help`: see segcore.cli.EVALUATE (the installed `segcore-evaluate` runs the same)."""
from segcore.cli import evaluate

if __name__ == "__main__":
    evaluate()
