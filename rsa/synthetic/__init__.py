"""Synthetic RSA phantom: cage geometry, radiograph simulator and ground truth (DESIGN §5)."""

from rsa.synthetic.study import write_study

__all__ = ["write_study"]
