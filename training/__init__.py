"""Vigil training: history in, a TorchScript model file with its contract and a report out."""
