"""Finished models: save / load the model folder, export."""
