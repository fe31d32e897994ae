"""The claims report: markdown, JSON, plots and the evidence table; several files merged into one."""
