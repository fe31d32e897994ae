"""The confound audit: every claim re-judged under named protocol variants."""
