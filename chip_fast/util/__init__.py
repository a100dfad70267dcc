"""Plumbing every stage uses: atomic writes, output locks, the CPUs a process may use, progress
lines."""
