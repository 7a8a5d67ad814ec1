"""The report: the shareable page (`page`), the tables and plots the notebooks and the page show (`display`), and
the page comparing runs (`compare`). It reads the run directory's files only: no torch, no stage module."""
