"""Torch-free contracts shared by training and serving: preprocessing and the model card."""
