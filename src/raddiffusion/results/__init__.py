"""Results below both training and figures: metrics with intervals, prediction files, run file names, comparisons."""
