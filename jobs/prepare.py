"""`python jobs/prepare.py --help`: see segcore.cli.PREPARE (the installed `segcore-prepare` runs the same)."""
from segcore.cli import prepare

if __name__ == "__main__":
    prepare()
