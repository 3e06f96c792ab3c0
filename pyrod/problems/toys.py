"""Analytic toy problems with closed-form derivatives. (Minimal version; extended by the problems work.)"""
from __future__ import annotations

import torch

from .problem import Problem

TOYS = {}
