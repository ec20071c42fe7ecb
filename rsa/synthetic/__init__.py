"""Synthetic RSA phantom: cage geometry, stereo radiograph simulator and ground truth (DESIGN §5)."""
