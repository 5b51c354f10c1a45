"""What every phase stands on: settings, errors, files, manifests, recipes, the stage runner,
process groups."""
