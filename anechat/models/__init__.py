"""Models: the registry (models.yaml), installed model directories, and pulling models."""
