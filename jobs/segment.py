"""`python jobs/segment.py --help`: see segcore.cli.SEGMENT (the installed `segcore-segment` runs the same)."""
from segcore.cli import segment

if __name__ == "__main__":
    segment()
