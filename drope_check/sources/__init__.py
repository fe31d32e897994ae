"""Evidence sources other than the suite: the report author's committed result files."""
