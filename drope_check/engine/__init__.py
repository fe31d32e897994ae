"""The measurement engine: architectures, attention capture, metrics, interventions, perplexity, texts."""
