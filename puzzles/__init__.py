"""One builder per source, each writing the dataset layout data.py describes and loads.

common.py (errors, input checks, writers) and grids.py (the ARC token canvas and augmentations)
sit at the bottom; arc_sources.py reads ARC JSON; the other files are the builders. Nothing here
imports data.py: data.py imports the builders and registers them in data.DATASETS.
"""
