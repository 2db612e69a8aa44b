"""Running a recipe: the driver, output directory, result store, streaming, progress, stopping, scale-out."""
