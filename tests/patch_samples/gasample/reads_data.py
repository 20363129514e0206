"""Reads package data while being imported, through its loader."""

# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)
import importlib.resources
import time

DATA = importlib.resources.files(__package__).joinpath("data.txt").read_text()
