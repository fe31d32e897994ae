"""The claims as data: bands, claim files, metric paths, verdicts, regeneration of expected values."""
