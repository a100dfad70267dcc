"""Map-quality studies, one folder per study: its scripts, a README.md whose first line names the
section of README.md or docs/ it backs, and its results/ beside them.

Run from the repository root as ``python -m experiments.<study>`` (single-script studies) or
``python -m experiments.<study>.<script>``: the current directory then comes first on sys.path,
so the tree's own chip_fast is the one measured. They read the real data of ../shared/data.
"""
