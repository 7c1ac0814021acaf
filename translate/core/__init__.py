"""The shared core: registries, recipes, weights files, devices, errors, signals, progress and
images, and the losses and resampling that both training and analysis use."""
