"""Evaluation of trained networks: features of a frozen network, kNN, the linear probe and classification
metrics. Nothing here trains the network it evaluates."""
