"""Running recipes: the runner executes each stage's notebook with papermill and records its state
(`runner`); the fingerprints decide which stages are up to date (`fingerprints`)."""
