"""Model pairs and where their weights come from: the pair registry, loaders, the hub, embedded GGUFs."""
