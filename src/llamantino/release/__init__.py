"""Publishing and rebuilding models: release folders, builds, exact weight differences, checks."""
