"""The bottom layer: files written whole (`io`), the run directory's every path (`rundir`), what a row of data is
(`rows`) and what machine this is (`machine`). No torch, and nothing from the layers above."""
